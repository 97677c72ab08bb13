"""The compiled static path on SmolLM2-135M-Instruct (float32, CPU): one weight read per verify pass?

A measurement, not a test. One process, interleaved rounds, medians:

1. Passes. The time of a one-token step and of verify passes of width 2, 4,
   8, 9 and 16 over a cached context: HF eager (DynamicCache), ours eager
   (BatchedTarget on specdec's cache) and ours compiled (StaticTarget; a
   9-token pass runs padded to width 16), beside the machine's weight-read
   time from a GEMV bandwidth probe in the same run (a one-row product over a
   matrix far larger than the caches; weight bytes / that bandwidth).
2. End to end. Tokens/s on the input-grounded and open prompts of
   ``specdec.bench.PROMPTS`` for the target alone (HF generate), HF prompt
   lookup, ours eager (n-gram) and ours compiled (n-gram, fixed k and
   ``auto``), with same-token checks against the target alone.

    python benchmarks/bench_compiled.py              # compiles 5 shapes on a cold cache (minutes), then ~10 min
    python benchmarks/bench_compiled.py --quick      # 2 prompts, 24 tokens

Writes docs/bench_compiled.json and docs/bench_compiled.md. Targets (issue 13,
on the CPU it runs on): compiled one-token step <= 1.15x the weight-read time;
9-token verify <= 1.4x the compiled one-token step; ours compiled n-gram >= 3x
the target alone and >= 2x HF prompt lookup on the grounded prompts, same tokens.
"""

from __future__ import annotations

import argparse
import fcntl
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from specdec import SpeculativeGenerator, StaticConfig, cpu_gemm
from specdec.batch_target import Segment
from specdec.bench import PROMPTS, environment, progress_bar, real_table, run_real, write_json
from specdec.bench.harness import gemv_bandwidth, time_forward, weight_bytes
from specdec.bench.report import machine_line
from specdec.bench.workloads import chat_ids
from specdec.drafts import NGramDrafter
from specdec.models import load_model
from specdec.static_target import DEFAULT_WIDTHS

ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (1, 2, 4, 8, 9, 16)


@torch.inference_mode()
def pass_times(gen: SpeculativeGenerator, context: torch.Tensor, rounds: int, seed: int = 0) -> dict[str, Any]:
    """Median seconds per pass by width: HF eager, ours eager, ours compiled; interleaved, shuffled per round."""
    static = gen.target  # StaticTarget
    eager = static.target  # the BatchedTarget under it: the same cache, eager passes
    length = int(context.shape[0])
    static.ensure(1, length + max(WIDTHS))
    eager.forward([Segment(0, 0, context, logits=False)])  # row 0 holds the context
    block = context[-max(WIDTHS) :]
    systems = {}
    for width in WIDTHS:
        segment = [Segment(0, length, block[:width])]  # the same slots every time: nothing is committed
        systems[("ours-compiled", width)] = lambda s=segment: static.forward(s)
        systems[("ours-eager", width)] = lambda s=segment: eager.forward(s)
    for system in systems.values():
        system()
    samples: dict[Any, list[float]] = {key: [] for key in systems}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(systems)
        rng.shuffle(order)
        for key in order:
            started = time.perf_counter()
            systems[key]()
            samples[key].append(time.perf_counter() - started)
    hf = time_forward(gen.model, context, list(WIDTHS), repeats=rounds)
    table: dict[str, dict[int, float]] = {"hf-eager": hf}
    for (system, width), values in samples.items():
        table.setdefault(system, {})[width] = statistics.median(values)
    return table


def products_floor(model: torch.nn.Module, rows: tuple[int, ...], rounds: int) -> dict[str, dict[int, float]]:
    """Median seconds of the model's float32 products alone, as a compiled step runs them (prepacked weights,
    q|k|v and gate|up concatenated, the output projection included), on MKL and on oneDNN, by row count.

    The floor a compiled step cannot go below with these libraries: the step minus this is attention,
    the pointwise kernels and the per-call overhead.
    """
    libraries = ["mkl", "onednn"] if cpu_gemm.onednn_packing_available() else ["mkl"]
    return {lib: {n: cpu_gemm.measure_products(model, n, lib, repeats=rounds) for n in rows} for lib in libraries}


def passes_table(result: dict[str, Any]) -> str:
    lines = [machine_line(result["environment"])]
    read_ms = result["weight_read_s"] * 1e3
    probe = f"GEMV probe {result['gemv_gb_s']:.2f} GB/s"
    lines.append(f"weights {result['weight_mb']:.0f} MB; {probe} -> weight read {read_ms:.1f} ms")
    for library, floor in (result.get("products_floor_s") or {}).items():
        parts = ", ".join(f"{n} row(s) {t * 1e3:.1f} ms ({t * 1e3 / read_ms:.2f}x read)" for n, t in floor.items())
        lines.append(f"the products alone ({library}, prepacked, q|k|v and gate|up concatenated): {parts}")
    if result.get("max_rss_mb"):
        lines.append(f"peak resident memory after compiling: {result['max_rss_mb']:.0f} MB")
    lines.append("width | HF eager ms | ours eager ms | ours compiled ms | compiled / weight read | compiled / 1-token")
    table = result["passes"]
    one = table["ours-compiled"][1]
    for width in WIDTHS:
        hf, ours, comp = (table[s][width] * 1e3 for s in ("hf-eager", "ours-eager", "ours-compiled"))
        padded = next((w for w in result["static_widths"] if w >= width), None)
        note = f" (runs as {padded})" if padded not in (None, width) else ""
        ratio = table["ours-compiled"][width] / one
        lines.append(f"{width}{note} | {hf:.1f} | {ours:.1f} | {comp:.1f} | {comp / read_ms:.2f} | {ratio:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=None, help="target model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="end-to-end rounds")
    parser.add_argument("--pass-rounds", type=int, default=9, help="rounds of the pass timings")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"),
        help="the target's dtype (bfloat16: where the CPU has it natively, avx512_bf16 or AMX)",
    )  # fmt: skip
    parser.add_argument("--prompt-lookup-tokens", type=int, default=10, help="HF prompt_lookup_num_tokens")
    parser.add_argument("--cache-dir", default=None, help="inductor's cache (default ~/.cache/specdec/inductor)")
    parser.add_argument("--no-autotune", action="store_true", help="compile without GEMM autotuning")
    parser.add_argument(
        "--widths", default=",".join(str(w) for w in DEFAULT_WIDTHS),
        help="static widths to compile (fewer: less compile time; a pass pads up to the next)",
    )  # fmt: skip
    parser.add_argument("--prompts", default=None, help="comma-separated prompt names (default: all six)")
    parser.add_argument("--quick", action="store_true", help="2 prompts, 24 tokens, 1 round, 3 pass rounds")
    parser.add_argument("--out-dir", default=str(ROOT / "docs"))
    parser.add_argument(
        "--lock", default=None, help="a file to hold an exclusive lock on while timing (after compiling): "
        "timing runs of other jobs that take the same lock do not overlap this one's"
    )  # fmt: skip
    parser.add_argument("--time-budget-s", type=float, default=1500.0, help="end-to-end runs stop starting past it")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_new_tokens, args.rounds, args.pass_rounds = 24, 1, 3
    torch.set_num_threads(args.threads)
    env = environment("cpu")
    print(machine_line(env), flush=True)
    dtype = getattr(torch, args.dtype)
    target, tokenizer = load_model(args.target, dtype=args.dtype, device="cpu", quiet=True)

    widths = tuple(int(w) for w in args.widths.split(","))
    cache_dir = Path(args.cache_dir) if args.cache_dir else None
    config = StaticConfig(autotune=not args.no_autotune, widths=widths, cache_dir=cache_dir)
    started = time.perf_counter()
    compiled = SpeculativeGenerator(target, NGramDrafter(), compile=config)
    build_s = time.perf_counter() - started
    static = compiled.target
    print(f"compiled generator built in {build_s:.1f} s; fallback: {static.fallback_reason}", flush=True)

    if args.lock:
        lock = open(args.lock, "a")  # noqa: SIM115 - held until the process exits
        print(f"waiting for the lock on {args.lock}", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    context = chat_ids(tokenizer, PROMPTS[0].text)[0]
    bandwidth = gemv_bandwidth(dtype)
    passes = pass_times(compiled, context, args.pass_rounds)
    # The library choice is a float32 one (inductor runs bfloat16 products on oneDNN).
    floor = products_floor(target, (1, 9), args.pass_rounds) if torch._C.has_mkl and dtype == torch.float32 else {}
    result: dict[str, Any] = {
        "environment": env,
        "target": args.target or "SmolLM2-135M-Instruct",
        "dtype": args.dtype,
        "context_tokens": int(context.shape[0]),
        "build_s": build_s,
        "compile_s": {f"rows={s.rows} width={s.width} slots={s.read_len}": t for s, t in static.compile_s.items()},
        "weight_mb": weight_bytes(target) / 1e6,
        "gemv_gb_s": bandwidth / 1e9,
        "weight_read_s": weight_bytes(target) / bandwidth,
        "passes": {system: {str(w): t for w, t in table.items()} for system, table in passes.items()},
        "static_widths": list(widths),
        "products_floor_s": floor,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    result["passes"] = passes  # int keys while this process formats the table
    text = passes_table(result)
    print(text, flush=True)

    prompts = [PROMPTS[0], PROMPTS[4]] if args.quick else list(PROMPTS)
    if args.prompts:
        prompts = [p for p in PROMPTS if p.name in args.prompts.split(",")]
    deadline = time.perf_counter() + args.time_budget_s
    real = run_real(
        target=target,
        tokenizer=tokenizer,
        prompts=prompts,
        drafters={"ngram": NGramDrafter},
        generators={"ngram-compiled": compiled, "ngram-auto-compiled": compiled},
        num_draft_tokens={"ngram-auto-compiled": "auto"},
        hf_prompt_lookup_tokens=args.prompt_lookup_tokens,
        max_new_tokens=args.max_new_tokens,
        rounds=args.rounds,
        warmup=0,
        deadline=deadline,
        progress=progress_bar(True, "bench_compiled"),
    )
    real.update(target=result["target"], threads=args.threads, environment=env)
    table = real_table(real)
    print(table, flush=True)
    print(f"passes: static {static.passes['static']}, eager {static.passes['eager']}", flush=True)
    result["end_to_end"] = real
    result["static_passes"] = dict(static.passes)
    if not args.quick:
        out = Path(args.out_dir)
        result["passes"] = {system: {str(w): t for w, t in table_.items()} for system, table_ in passes.items()}
        stem = "bench_compiled" if dtype == torch.float32 else f"bench_compiled_{args.dtype}"
        write_json(result, out / f"{stem}.json")
        (out / f"{stem}.md").write_text(
            "# Compiled static path: measurements\n\n"
            "Written by `benchmarks/bench_compiled.py`; one process, interleaved, medians. "
            "The machine is shared with other jobs: the numbers are noisy.\n\n"
            f"```\n{text}\n```\n\n```\n{table}\n```\n"
        )
        print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
