"""GPU sweep of the controlled workload: random-weight Llama-shaped targets, bf16 on CUDA.

A measurement, not a test. Targets: ~1.1B (Llama-3.2-1B layer shapes) and
~7.2B (Llama-3-8B layer shapes), both with a 32k vocabulary so that the draft
is a ~68M Llama (hidden 768, 2 layers, as JackFram/llama-68m). Random weights,
built directly on the GPU: no hub. The targets are built with
``random_llama(stable_greedy=True)``: their output projection is a row
permutation of the input embedding and their layers' output projections are
scaled by 0.01, so a target walks a fixed permutation of the vocabulary by a
wide margin. A plain random model's top logits are so close that in bfloat16
a verify pass over k + 1 positions and ``generate``'s one-position steps pick
different tokens within a few tokens; the oracle's reference then stops being
the target's choice and nearly every draft is rejected (checked on CPU in
bfloat16). The change alters no forward pass's work, only the values, so the
timings stand. For each target: the target alone (HF
generate), ours with OracleDrafter(cost_model=draft) and HF assisted generation
with the same oracle draft, alpha x k, plus ours with num_draft_tokens="auto".

One command, hard internal time budget (default 450 s of sweeping, after which
no new run starts; the JSON is written after each target):

    python benchmarks/gpu_sweep.py --out-dir "$OUT"

CPU smoke run with tiny shapes (what the tests do):

    python benchmarks/gpu_sweep.py --device cpu --tiny --out-dir /tmp/sweep
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from specdec.bench import (
    controlled_table,
    environment,
    oracle_model_class,
    plot_controlled,
    progress_bar,
    random_llama,
    run_controlled,
    write_json,
)
from specdec.drafts import OracleDrafter

ROOT = Path(__file__).resolve().parents[1]

VOCAB = 32000
SHAPES = {
    # name: hidden, layers, intermediate, heads, kv heads
    "1b": (2048, 16, 8192, 32, 8),
    "8b": (4096, 32, 14336, 32, 8),
    "draft-68m": (768, 2, 3072, 12, 12),
}
# Small enough for a CPU smoke run.
TINY = {"1b": (256, 2, 512, 4, 2), "8b": (96, 3, 192, 4, 2), "draft-68m": (32, 1, 64, 2, 2)}
TINY_VOCAB = 8000


def build(
    shape: tuple[int, int, int, int, int],
    *,
    vocab: int,
    dtype,
    device,
    seed: int,
    oracle: bool = False,
    stable: bool = False,
):
    hidden, layers, intermediate, heads, kv = shape
    return random_llama(
        vocab_size=vocab,
        hidden_size=hidden,
        num_layers=layers,
        intermediate_size=intermediate,
        num_heads=heads,
        num_kv_heads=kv,
        dtype=dtype,
        device=device,
        seed=seed,
        model_class=oracle_model_class(LlamaForCausalLM) if oracle else None,
        stable_greedy=stable,
    )


def realised_alpha_problems(result: dict, *, tolerance: float = 0.2) -> list[str]:
    """Cells whose realised alpha is far below the nominal one: the oracle's reference went stale."""
    problems = []
    for row in result["rows"]:
        measured = row.get("measured_alpha")
        if row["k"] != "auto" and measured is not None and measured < row["alpha"] - tolerance:
            problems.append(f"alpha={row['alpha']} k={row['k']}: realised alpha {measured:.2f}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--targets", default="1b,8b")
    parser.add_argument("--alphas", default="0.5,0.7,0.8,0.9")
    parser.add_argument("--ks", default="2,4,6,8")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=450.0, help="hard budget: no run starts after this")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    parser.add_argument("--no-hf", action="store_true")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["bfloat16", "float16", "float32"],
        help="default: bfloat16 on CUDA, float32 on CPU",
    )
    parser.add_argument("--out-dir", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    hard_deadline = start + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_sweep: CUDA is not available; use --device cpu --tiny for a smoke run", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    shapes = TINY if args.tiny else SHAPES
    vocab = TINY_VOCAB if args.tiny else VOCAB
    alphas = [float(a) for a in args.alphas.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    targets = args.targets.split(",")
    out_dir = Path(args.out_dir)
    summary: dict = {"environment": environment(str(device)), "dtype": str(dtype), "results": {}}
    draft = build(shapes["draft-68m"], vocab=vocab, dtype=dtype, device=device, seed=1, oracle=True)
    draft_params = sum(p.numel() for p in draft.parameters())
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, vocab, (1, args.prompt_tokens), generator=generator)
    for i, name in enumerate(targets):
        now = time.perf_counter()
        if now > hard_deadline:
            print(f"gpu_sweep: budget spent, skipping {name}")
            break
        # Share what is left among the remaining targets, the bigger one last with the rest.
        share = (hard_deadline - now) / (len(targets) - i)
        target = build(shapes[name], vocab=vocab, dtype=dtype, device=device, seed=0, stable=True)
        params = sum(p.numel() for p in target.parameters())
        result = run_controlled(
            target=target,
            draft=draft,
            prompt_ids=prompt.to(device),
            oracle_factory=OracleDrafter,
            alphas=alphas,
            ks=ks,
            max_new_tokens=args.max_new_tokens,
            rounds=args.rounds,
            warmup=args.warmup,
            include_hf=not args.no_hf,
            deadline=time.perf_counter() + share,
            progress=progress_bar(True, f"sweep {name}"),
        )
        result.update(
            target=f"random Llama {params / 1e9:.2f}B ({name} shapes)",
            draft=f"random Llama {draft_params / 1e6:.0f}M",
            dtype=str(dtype).replace("torch.", ""),
            device=summary["environment"].get("gpu", str(device)),
            environment=summary["environment"],
        )
        print(controlled_table(result), flush=True)
        problems = realised_alpha_problems(result)
        result["stale_reference_cells"] = problems
        if problems:
            print(
                f"gpu_sweep: WARNING, the oracle's reference went stale in {len(problems)} cells: {problems}",
                flush=True,
            )
        summary["results"][name] = result
        write_json(summary, out_dir / "bench_gpu_sweep.json")
        plot_controlled(result, out_dir / f"bench_gpu_{name}.png", title=f"{result['target']} on {result['device']}")
        del target
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary["elapsed_s"] = time.perf_counter() - start
    write_json(summary, out_dir / "bench_gpu_sweep.json")
    print(f"gpu_sweep: done in {summary['elapsed_s']:.0f} s; wrote {out_dir / 'bench_gpu_sweep.json'}")
    if any(result.get("stale_reference_cells") for result in summary["results"].values()):
        print("gpu_sweep: some cells lost the oracle's reference (see the warnings): their numbers mean little")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
