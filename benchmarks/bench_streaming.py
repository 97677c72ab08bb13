"""Streaming overhead: generation speed with 0, 1, 100, 1,000 subscribers, and sink-to-subscriber latency.

Not a test: a measurement. Everything runs in one process, on two workloads:

``tiny``     a tiny random Llama (vocab 8192, hidden 256, 4 layers; no download), no tokenizer.
             Its steps are short and Python-bound, so it is the worst case for the hub: generation
             needs the GIL almost all the time, and every microsecond the event loop spends on
             subscribers is taken from it.
``default``  SmolLM2-135M-Instruct in bfloat16 (the CLI's default model, from the local cache)
             with the n-gram drafter at its defaults (the CLI's default drafter), greedy, on a
             chat-formatted grounded prompt, with the tokenizer (events carry text). The realistic
             workload.

For each workload the subscriber counts are interleaved in rounds (a fresh random order each
round) and the medians reported, throughput as a ratio to 0 subscribers measured in the same
rounds. Torch runs on one thread, so generation takes one core and the event loop the other.

    python benchmarks/bench_streaming.py                        # both workloads, ~4-6 min on 2 cores
    python benchmarks/bench_streaming.py --workloads tiny --rounds 5
    python benchmarks/bench_streaming.py --json docs/bench_streaming.json

Throughput is the generator's own tokens/s (``out.stats``: new tokens over its wall time) while
the hub fans events out on the loop thread. Latency is from the moment the generator calls the
sink with a verified block (before detokenization) to the moment a subscriber's ``async for``
hands it that commit, over every subscriber and every commit of the runs with 1, 100 and 1,000
subscribers (p50/p99 per run, then the median over rounds). Each subscriber is a task doing
``async for event in stream.subscribe()`` and noting the receipt time of each commit. "loop CPU"
is the event-loop thread's CPU time while generation ran, as a share of generation's wall time.
The extra rows run the same subscribers with the hub's opt-in fan-out budget
(``StreamHub(fanout_share=..., fanout_max_delay_s=...)``, see ``streaming/hub.py``), which wakes
subscribers in rounds spaced so that waking them takes at most that share of the loop's CPU time.
Generation starts only once every subscriber task has subscribed (a gate inside the wrapped
generator, outside its timing), so the figures are about streaming, not about creating tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import torch

from specdec import SpeculativeGenerator
from specdec.bench import PROMPTS, cpu_model, random_llama
from specdec.drafts import NGramDrafter
from specdec.streaming import CommitEvent, StreamHub

COUNTS = (0, 1, 100, 1000)


class TimedGenerator:
    """Wraps a generator; stamps ``perf_counter`` when the sink receives each verified block.

    ``generate`` first waits for ``gate`` (set once every subscriber is in), so that the
    generator's own tokens/s, which ``out.stats`` measures inside the wrapped ``generate``,
    covers streaming to N subscribers and not the creation of N tasks.
    """

    def __init__(self, gen: SpeculativeGenerator) -> None:
        self.gen = gen
        self.model = gen.model
        self.drafter = gen.drafter
        self.sink_times: dict[int, float] = {}
        self.gate = threading.Event()

    def generate(self, input_ids: Any, on_tokens: Any = None, **kwargs: Any) -> Any:
        sink = on_tokens
        times = self.sink_times = {}
        if not self.gate.wait(60):
            raise RuntimeError("the benchmark never opened the gate")

        class Stamp:
            def on_block(self, block: Any) -> None:
                times[block.step] = time.perf_counter()
                sink.on_block(block)

            def on_draft(self, step: int, token_ids: list[int]) -> None:
                sink.on_draft(step, token_ids)

        return self.gen.generate(input_ids, on_tokens=Stamp(), **kwargs)


async def one_run(
    gen: TimedGenerator, prompt: torch.Tensor, tokenizer: Any, tokens: int, subscribers: int, hub_kwargs: dict
) -> dict[str, Any]:
    hub = StreamHub(retention_s=0, **hub_kwargs)
    # Per subscriber: the step and the receipt time of each commit, in two lists of ints and floats (objects
    # the cyclic GC does not track, so that keeping 100,000 receipts does not trigger full collections).
    receipts: list[tuple[list[int], list[float]]] = [([], []) for _ in range(subscribers)]
    gen.gate.clear()
    stream = hub.start(gen, prompt, tokenizer=tokenizer, max_new_tokens=tokens)

    async def consume(steps: list[int], times: list[float]) -> None:
        async for event in stream.subscribe():
            if isinstance(event, CommitEvent) and event.token_ids:
                steps.append(event.step)
                times.append(time.perf_counter())

    tasks = [asyncio.create_task(consume(steps, times)) for steps, times in receipts]
    while stream.subscriber_count < subscribers:  # every task has subscribed and read the start event
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    loop_cpu_start = time.thread_time()
    gen.gate.set()
    out = await stream.result()
    loop_cpu = time.thread_time() - loop_cpu_start  # while generation ran
    await asyncio.gather(*tasks)
    sink_times = gen.sink_times
    latencies = [t - sink_times[step] for steps, times in receipts for step, t in zip(steps, times, strict=False)]
    for steps, _ in receipts:
        assert steps == sorted(sink_times), "a subscriber missed a commit"
    return {
        "tokens_per_s": out.stats.tokens_per_s,
        "latencies": latencies,
        "steps": out.stats.steps,
        "new_tokens": out.stats.new_tokens,
        "wall_s": out.stats.new_tokens / out.stats.tokens_per_s,
        "loop_cpu_s": loop_cpu,
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def tiny_workload(args: argparse.Namespace) -> dict[str, Any]:
    model = random_llama(
        vocab_size=8192, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, max_positions=2048, seed=0
    )
    return {
        "name": "tiny",
        "description": "tiny random Llama (vocab 8192, hidden 256, 4 layers, float32), no tokenizer",
        "gen": TimedGenerator(SpeculativeGenerator(model, NGramDrafter())),
        "prompt": torch.randint(0, 8192, (1, 32)),
        "tokenizer": None,
        "tokens": args.tiny_tokens,
        "rounds": args.tiny_rounds or args.rounds,
    }


def default_workload(args: argparse.Namespace) -> dict[str, Any]:
    from specdec.models import load_model

    model, tok = load_model(None, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = None  # every run makes exactly --default-tokens tokens
    prompt = next(p for p in PROMPTS if p.name == args.prompt)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": prompt.text}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    return {
        "name": "default",
        "description": (
            f"SmolLM2-135M-Instruct bfloat16 (CLI default), NGramDrafter() defaults, greedy, "
            f"chat prompt {prompt.name!r} ({ids.shape[1]} tokens), with tokenizer"
        ),
        "gen": TimedGenerator(SpeculativeGenerator(model, NGramDrafter())),
        "prompt": ids,
        "tokenizer": tok,
        "tokens": args.default_tokens,
        "rounds": args.default_rounds or args.rounds,
    }


def parse_budget(spec: str) -> dict[str, float]:
    """``SHARE`` or ``SHARE:MAX_DELAY_S`` -> StreamHub keyword arguments."""
    share, _, delay = spec.partition(":")
    kwargs = {"fanout_share": float(share)}
    if delay:
        kwargs["fanout_max_delay_s"] = float(delay)
    return kwargs


def configurations(budgets: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """(subscribers, StreamHub keyword arguments): the hub's defaults at each count, then each budget at 100 and
    1,000 subscribers."""
    configs: list[tuple[int, dict[str, Any]]] = [(n, {}) for n in COUNTS]
    for spec in budgets:
        configs += [(n, parse_budget(spec)) for n in (100, 1000)]
    return configs


async def run_workload(work: dict[str, Any], budgets: list[str]) -> dict[str, Any]:
    gen, prompt, tok = work["gen"], work["prompt"], work["tokenizer"]
    await one_run(gen, prompt, tok, 16, 1, {})  # warm up
    configs = configurations(budgets)
    results: list[list[dict[str, Any]]] = [[] for _ in configs]
    rng = random.Random(0)
    started = time.perf_counter()
    for round_ in range(work["rounds"]):
        order = list(range(len(configs)))
        rng.shuffle(order)
        for i in order:
            n, hub_kwargs = configs[i]
            results[i].append(await one_run(gen, prompt, tok, work["tokens"], n, hub_kwargs))
        print(
            f"  {work['name']}: round {round_ + 1}/{work['rounds']} done ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
        )
    base = statistics.median(r["tokens_per_s"] for r in results[0])
    rows = []
    for (n, hub_kwargs), runs in zip(configs, results, strict=False):
        row: dict[str, Any] = {
            "subscribers": n,
            "hub": hub_kwargs,
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            # the ratio of medians, and the median of the per-round ratios (each run against its own round's 0)
            "ratio_to_0": statistics.median(r["tokens_per_s"] for r in runs) / base,
            "ratio_to_0_paired": statistics.median(
                r["tokens_per_s"] / z["tokens_per_s"] for r, z in zip(runs, results[0], strict=False)
            ),
            "tokens_per_s_runs": [round(r["tokens_per_s"], 2) for r in runs],
            "loop_cpu_share": statistics.median(r["loop_cpu_s"] / r["wall_s"] for r in runs),
            "steps_per_run": statistics.median(r["steps"] for r in runs),
        }
        if n:
            row["latency_p50_ms"] = statistics.median(percentile(r["latencies"], 50) for r in runs) * 1e3
            row["latency_p99_ms"] = statistics.median(percentile(r["latencies"], 99) for r in runs) * 1e3
            row["latency_max_ms"] = statistics.median(max(r["latencies"]) for r in runs) * 1e3
            row["latency_p99_ms_runs"] = [round(percentile(r["latencies"], 99) * 1e3, 3) for r in runs]
        rows.append(row)
    return {
        "workload": work["name"],
        "description": work["description"],
        "new_tokens_per_run": work["tokens"],
        "rounds": work["rounds"],
        "rows": rows,
    }


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(__file__),
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gil_switch_interval_ms": sys.getswitchinterval() * 1e3,
        "platform": platform.platform(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['workload']}: {result['description']}")
    print(
        f"{result['new_tokens_per_run']} new tokens/run, {result['rounds']} interleaved rounds, medians; "
        f"steps/run {result['rows'][0]['steps_per_run']:g}"
    )
    print(
        f"{'subscribers':>11} {'hub':>40} {'tokens/s':>9} {'vs 0':>7} {'paired':>7} {'loop CPU':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
    )
    for row in result["rows"]:
        lat = (
            f"{row['latency_p50_ms']:7.2f} {row['latency_p99_ms']:7.2f} {row['latency_max_ms']:7.2f}"
            if row["subscribers"]
            else f"{'-':>7} {'-':>7} {'-':>7}"
        )
        hub = ",".join(f"{k}={v:g}" for k, v in row["hub"].items()) or "defaults"
        print(
            f"{row['subscribers']:>11} {hub:>40} {row['tokens_per_s']:>9.1f} {row['ratio_to_0']:>7.1%} "
            f"{row['ratio_to_0_paired']:>7.1%} {row['loop_cpu_share']:>9.1%} {lat}"
        )
    by_n = {row["subscribers"]: row for row in result["rows"] if not row["hub"]}
    at_1000, p99_100 = by_n[1000]["ratio_to_0"], by_n[100]["latency_p99_ms"]
    print(
        f"targets: throughput at 1,000 >= 95% of 0: {at_1000:.1%} ({'met' if at_1000 >= 0.95 else 'NOT met'}); "
        f"p99 latency at 100 < 5 ms: {p99_100:.2f} ms ({'met' if p99_100 < 5 else 'NOT met'})"
    )


async def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1e3)
    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "results": [],
    }
    makers = {"tiny": tiny_workload, "default": default_workload}
    for name in args.workloads:
        work = makers[name](args)
        result = await run_workload(work, args.budgets)
        report["results"].append(result)
        print_table(result)
        del work
    m = report["machine"]
    print(
        f"\n{m['cpu']} (torch CPU capability {m['cpu_capability']}), {m['cpus']} CPUs; "
        f"python {m['python']}, torch {m['torch']}, torch threads "
        f"{m['torch_threads']}, GIL switch interval {m['gil_switch_interval_ms']:g} ms; commit {m['commit']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=("tiny", "default"), default=["tiny", "default"])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per workload")
    parser.add_argument("--tiny-rounds", type=int, default=None, help="override --rounds for the tiny workload")
    parser.add_argument("--default-rounds", type=int, default=None, help="override --rounds for the default model")
    parser.add_argument("--tiny-tokens", type=int, default=200, help="new tokens per run, tiny model")
    parser.add_argument("--default-tokens", type=int, default=96, help="new tokens per run, default model")
    parser.add_argument("--prompt", default="edit-email", help="benchmark prompt name (specdec.bench.PROMPTS)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the loop needs a core)")
    parser.add_argument(
        "--switch-interval", type=float, default=None, help="sys.setswitchinterval in ms (Python's default is 5 ms)"
    )
    parser.add_argument(
        "--budgets",
        nargs="*",
        default=["0.05", "0.02:0.25"],
        metavar="SHARE[:MAX_DELAY_S]",
        help="also run 100 and 1,000 subscribers with StreamHub(fanout_share=SHARE, "
        "fanout_max_delay_s=MAX_DELAY_S) for each; none to skip",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    asyncio.run(main(parser.parse_args()))
