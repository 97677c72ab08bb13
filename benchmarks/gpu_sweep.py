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

Then, per target, the compiled path (issue 13) at one cell (alpha 0.8, k 5):
tokens/s of HF alone (eager, and its static cache + torch.compile), HF
assisted, ours eager and ours compiled (``compile=StaticConfig(...)``: CUDA
graphs per width), the compiled one-token step against the weight-read time
(a GEMV bandwidth probe), and how many compiled outputs differ from the
target's eager greedy output (bf16 may round a wide pass differently; never
hidden). ``--no-compiled`` skips it.

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

from specdec import SpeculativeGenerator, StaticConfig
from specdec.bench import (
    configure_assistant,
    configure_oracle,
    controlled_table,
    environment,
    oracle_model_class,
    plot_controlled,
    progress_bar,
    random_llama,
    run_controlled,
    write_json,
)
from specdec.bench.harness import gemv_bandwidth, hf_greedy, interleave, weight_bytes
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


def compiled_cell(
    target,
    draft,
    prompt: torch.Tensor,
    *,
    alpha: float,
    k: int,
    max_new_tokens: int,
    rounds: int,
    config: StaticConfig,
    deadline: float,
    probe_mb: int = 256,
) -> dict:
    """The compiled path against HF and ours eager at one (alpha, k) cell; tokens/s and same-token checks."""
    device = prompt.device
    reference = hf_greedy(target, prompt, max_new_tokens)  # [1, L + new]: the eager target's greedy output
    new = int(reference.shape[1] - prompt.shape[1])

    def oracle() -> OracleDrafter:
        return OracleDrafter(reference[0], alpha, num_draft_tokens=k, cost_model=draft)

    started = time.perf_counter()
    compiled = SpeculativeGenerator(target, oracle(), compile=config)
    build_s = time.perf_counter() - started
    eager = SpeculativeGenerator(target, oracle())
    configure_oracle(draft, reference[0].tolist(), alpha)
    outputs: dict[str, torch.Tensor] = {}

    def hf(name: str, **extra) -> None:
        outputs[name] = hf_greedy(target, prompt, max_new_tokens, **extra)

    def ours(name: str, gen: SpeculativeGenerator) -> None:
        outputs[name] = gen.generate(prompt, max_new_tokens=max_new_tokens, num_draft_tokens=k).sequences

    def assisted() -> None:
        configure_assistant(draft, k)
        hf("hf-assisted", assistant_model=draft)

    systems = {
        "hf-eager": lambda: hf("hf-eager"),
        "hf-static-compile": lambda: hf("hf-static-compile", cache_implementation="static"),
        "hf-assisted": assisted,
        "ours-eager": lambda: ours("ours-eager", eager),
        "ours-compiled": lambda: ours("ours-compiled", compiled),
    }
    interleave(systems, rounds=1, device=device, deadline=deadline)  # warm-up: HF compiles its static cache here
    timings = interleave(systems, rounds=rounds, device=device, deadline=deadline)
    configure_oracle(draft, None)
    read_s = weight_bytes(target) / gemv_bandwidth(next(target.parameters()).dtype, device, megabytes=probe_mb)
    one_token_s = compiled.draft_costs.verify_s(1)  # the warm-up's compiled one-token pass
    result = {
        "alpha": alpha,
        "k": k,
        "new_tokens": new,
        "build_s": build_s,
        "fallback": getattr(compiled.target, "fallback_reason", None),
        "weight_read_ms": read_s * 1e3,
        "compiled_one_token_ms": one_token_s * 1e3,
        "compiled_one_token_over_read": one_token_s / read_s,
        "systems": {},
    }
    for name in systems:
        seconds = timings.median(name)
        out = outputs.get(name)
        result["systems"][name] = {
            "tokens_per_s": new / seconds if seconds == seconds else None,
            "same_tokens_as_eager_greedy": bool(out is not None and torch.equal(out.cpu(), reference.cpu())),
        }
    return result


def compiled_summary(cell: dict) -> str:
    rate = {name: entry["tokens_per_s"] for name, entry in cell["systems"].items()}
    lines = [
        f"compiled path, alpha={cell['alpha']} k={cell['k']}: one-token step {cell['compiled_one_token_ms']:.2f} ms "
        f"vs weight read {cell['weight_read_ms']:.2f} ms ({cell['compiled_one_token_over_read']:.2f}x); "
        f"built in {cell['build_s']:.0f} s; fallback: {cell['fallback']}"
    ]
    for name, entry in cell["systems"].items():
        value = entry["tokens_per_s"]
        shown = f"{value:.1f} tok/s" if value else "not run"
        lines.append(f"  {name}: {shown}, same tokens as eager greedy: {entry['same_tokens_as_eager_greedy']}")
    if rate.get("ours-compiled") and rate.get("hf-assisted"):
        lines.append(f"  ours compiled / HF assisted: {rate['ours-compiled'] / rate['hf-assisted']:.2f}x")
    return "\n".join(lines)


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
    parser.add_argument("--no-compiled", action="store_true", help="skip the compiled path's cell")
    parser.add_argument(
        "--compile-off", action="store_true",
        help="the compiled cell's static shapes without compiling (the default on a CPU: a smoke run)",
    )  # fmt: skip
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
        sweep_share = share * (0.6 if not args.no_compiled else 1.0)
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
            deadline=time.perf_counter() + sweep_share,
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
        if not args.no_compiled:
            compile_it = device.type == "cuda" and not args.compile_off
            config = StaticConfig(compile=compile_it, widths=(1, 2, 4, 6, 8), warmup=True)
            cell = compiled_cell(
                target, draft, prompt.to(device), alpha=0.8, k=5, max_new_tokens=args.max_new_tokens,
                rounds=args.rounds, config=config, deadline=min(hard_deadline, now + share),
                probe_mb=16 if args.tiny else 256,
            )  # fmt: skip
            result["compiled"] = cell
            print(compiled_summary(cell), flush=True)
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
