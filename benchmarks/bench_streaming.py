"""Streaming overhead: generation speed with 0, 1, 100, 1,000 subscribers, and sink-to-subscriber latency.

Not a test: a measurement. Everything runs in one process on a tiny random
Llama (no hub download), the configurations interleaved over several repeats
and the medians reported, as ratios to the 0-subscriber run.

    python benchmarks/bench_streaming.py                 # ~1-2 min on 2 CPU cores
    python benchmarks/bench_streaming.py --repeats 3 --tokens 128 --hidden 256

Throughput is the generator's own tokens/s (``out.stats``: new tokens over
its wall time) while the hub fans events out on the loop thread. Latency is
from the moment the generator calls the sink with a verified block (before
detokenization) to the moment a subscriber's ``async for`` hands it the
commit, measured on every subscriber of the 100-subscriber runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from drafts import NGramDrafter  # noqa: E402
from specdec import SpeculativeGenerator  # noqa: E402
from streaming import CommitEvent, StreamHub  # noqa: E402


class TimedGenerator:
    """Wraps a generator; stamps ``perf_counter`` when the sink receives each verified block."""

    def __init__(self, gen: SpeculativeGenerator) -> None:
        self.gen = gen
        self.model = gen.model
        self.drafter = gen.drafter
        self.sink_times: dict[int, float] = {}

    def generate(self, input_ids: Any, on_tokens: Any = None, **kwargs: Any) -> Any:
        sink = on_tokens
        times = self.sink_times = {}

        class Stamp:
            def on_tokens(self, step: int, token_ids: list[int]) -> None:
                times[step] = time.perf_counter()
                sink.on_tokens(step, token_ids)

            def on_draft(self, step: int, token_ids: list[int]) -> None:
                sink.on_draft(step, token_ids)

        return self.gen.generate(input_ids, on_tokens=Stamp(), **kwargs)


async def one_run(gen: TimedGenerator, prompt: torch.Tensor, tokens: int, subscribers: int) -> dict[str, Any]:
    hub = StreamHub(retention_s=0)
    stream = hub.start(gen, prompt, max_new_tokens=tokens)
    receipts: list[list[tuple[int, float]]] = [[] for _ in range(subscribers)]

    async def consume(log: list[tuple[int, float]]) -> None:
        async for event in stream.subscribe():
            if isinstance(event, CommitEvent):
                log.append((event.step, time.perf_counter()))

    tasks = [asyncio.create_task(consume(log)) for log in receipts]
    out = await stream.result()
    await asyncio.gather(*tasks)
    latencies = [t - gen.sink_times[step] for log in receipts for step, t in log]
    for log in receipts:
        assert len(log) == out.stats.steps, "a subscriber missed a commit"
    return {"tokens_per_s": out.stats.tokens_per_s, "latencies": latencies, "steps": out.stats.steps}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def main(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval / 1e3)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64),
        max_position_embeddings=2048,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    gen = TimedGenerator(SpeculativeGenerator(model, NGramDrafter(num_draft_tokens=4)))
    prompt = torch.randint(0, args.vocab, (1, 32))
    counts = [0, 1, 100, 1000]

    await one_run(gen, prompt, 16, 1)  # warm up
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    rng = random.Random(0)
    started = time.perf_counter()
    for repeat in range(args.repeats):
        order = counts[:]
        rng.shuffle(order)
        for n in order:
            results[n].append(await one_run(gen, prompt, args.tokens, n))
        print(f"  repeat {repeat + 1}/{args.repeats} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    base = statistics.median(r["tokens_per_s"] for r in results[0])
    print(
        f"\nbench_streaming: Llama vocab={args.vocab} hidden={args.hidden} layers={args.layers}, "
        f"{args.tokens} new tokens/run, n-gram drafter k=4, {args.repeats} interleaved repeats, medians"
    )
    print(f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"torch threads {args.threads}, GIL switch interval {sys.getswitchinterval() * 1e3:g} ms, "
          f"{platform.processor() or platform.machine()}")
    print(f"steps/run: {results[0][0]['steps']}")
    print(f"{'subscribers':>12} {'tokens/s':>10} {'vs 0':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for n in counts:
        tps = statistics.median(r["tokens_per_s"] for r in results[n])
        if n:
            p50 = statistics.median(percentile(r["latencies"], 50) for r in results[n]) * 1e3
            p99 = statistics.median(percentile(r["latencies"], 99) for r in results[n]) * 1e3
            lat = f"{p50:8.2f} {p99:8.2f}"
        else:
            lat = f"{'-':>8} {'-':>8}"
        print(f"{n:>12} {tps:>10.1f} {tps / base:>7.1%} {lat}")
    at_1000 = statistics.median(r["tokens_per_s"] for r in results[1000]) / base
    p99_100 = statistics.median(percentile(r["latencies"], 99) for r in results[100]) * 1e3
    print(f"\ntargets: throughput at 1,000 >= 95% of 0: {at_1000:.1%} ({'met' if at_1000 >= 0.95 else 'NOT met'}); "
          f"p99 latency at 100 < 5 ms: {p99_100:.2f} ms ({'met' if p99_100 < 5 else 'NOT met'})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=200, help="new tokens per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the loop needs a core)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval in ms (Python's default is 5 ms)")
    asyncio.run(main(parser.parse_args()))
