"""Benchmark: streaming over the OpenAI-compatible HTTP front door vs the in-process hub (not a test).

    flock /tmp/specdec-bench.lock .venv/bin/python benchmarks/bench_http.py \\
        [--clients 1,10,50] [--tokens 24] [--rounds 2] [--dtype bfloat16] [--json docs/bench_http.json]

Systems, on SmolLM2-135M-Instruct with the n-gram drafter (the CLI's
default), interleaved in rounds (the order alternates every round):

- ``in-process``: N concurrent ``StreamHub.start`` calls in this process, one
  asyncio subscriber each (the generator runs them one after another, as the
  server does).
- ``http``: ``specdec serve --http`` as a separate process on 127.0.0.1 with
  its own copy of the model; N concurrent streaming chat completions from
  ``httpx`` clients in this process.

Each of the N clients has its own prompt; greedy; ``--tokens`` new tokens.
Definitions:

- **TTFT**: from just before the request is sent (``hub.start`` for in-process)
  to the first non-empty text. With one generator, requests queue: at N
  clients the TTFT includes waiting for the requests ahead.
- **ITL**: between two consecutive non-empty texts of one client (a commit
  carries a verified block, 1..k+1 tokens).
- **tokens/s**: all clients' completion tokens / (first request sent → last
  client done). ``share`` = http / in-process, paired within a round, median.

p50 / p99 pool every sample of every round. Every HTTP text is checked
against the in-process text of the same prompt (greedy: they must match).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PROMPTS = [
    "Write a haiku about the sea", "Explain KV caches in one paragraph", "List three uses of copper",
    "Summarise: the quick brown fox jumps over the lazy dog", "What is speculative decoding?",
    "Give me a short recipe for pancakes", "Describe a sunset over the mountains", "Why is the sky blue?",
    "Name five prime numbers and explain why they are prime", "Translate 'good morning' into French",
]  # fmt: skip


def prompt_for(i: int) -> str:
    return f"{PROMPTS[i % len(PROMPTS)]} (request {i})"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    return f"{cpu}, {os.cpu_count()} cores, torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


# ----------------------------------------------------------------------------- the two systems


async def run_inprocess(hub: Any, generator: Any, tokenizer: Any, n: int, tokens: int) -> dict[str, Any]:
    from specdec.streaming import CommitEvent

    async def one(i: int) -> tuple[float, list[float], str]:
        messages = [{"role": "user", "content": prompt_for(i)}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        sent = time.perf_counter()
        stream = hub.start(generator, torch.tensor([ids]), tokenizer=tokenizer, max_new_tokens=tokens, do_sample=False)
        times, texts = [], []
        async for event in stream.subscribe():
            if isinstance(event, CommitEvent) and event.text:
                times.append(time.perf_counter())
                texts.append(event.text)
        await stream.result()
        return sent, times, "".join(texts)

    return _summarise(await _gather(one, n), tokens)


async def run_http(url: str, model: str, n: int, tokens: int) -> dict[str, Any]:
    async def one(i: int, http: httpx.AsyncClient) -> tuple[float, list[float], str]:
        body = {"model": model, "messages": [{"role": "user", "content": prompt_for(i)}], "max_tokens": tokens,
                "temperature": 0, "stream": True}  # fmt: skip
        sent = time.perf_counter()
        times, texts = [], []
        async with http.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            resp.raise_for_status()
            async for line in resp.aiter_lines():
                if not line.startswith("data:") or line.endswith("[DONE]"):
                    continue
                chunk = json.loads(line[5:])
                text = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if text:
                    times.append(time.perf_counter())
                    texts.append(text)
        return sent, times, "".join(texts)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n + 8)) as http:
        return _summarise(await _gather(lambda i: one(i, http), n), tokens)


async def _gather(one: Any, n: int) -> tuple[float, list[tuple[float, list[float], str]], float]:
    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    return started, results, time.perf_counter()


def _summarise(run: tuple[float, list[tuple[float, list[float], str]], float], tokens: int) -> dict[str, Any]:
    started, results, ended = run
    ttft = [times[0] - sent for sent, times, _ in results if times]
    itl = [b - a for _, times, _ in results for a, b in zip(times, times[1:], strict=False)]
    return {"ttft": ttft, "itl": itl, "tokens_per_s": tokens * len(results) / (ended - started),
            "texts": [text for _, _, text in results]}  # fmt: skip


# ----------------------------------------------------------------------------- main


def start_server(port: int, dtype: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    args = [sys.executable, "-m", "specdec.cli", "serve", "--dtype", dtype, "--device", "cpu",
            "--http", f"127.0.0.1:{port}", "--max-new-tokens-cap", "4096"]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the server did not come up in 900 s; see {log}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--server-log", default="/tmp/specdec-bench-http-server.log")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from specdec import SpeculativeGenerator
    from specdec.drafts import NGramDrafter
    from specdec.models import DEFAULT_MODEL, load_model
    from specdec.streaming import StreamHub

    clients = [int(c) for c in args.clients.split(",")]
    port = args.port or free_port()
    print(f"machine: {machine()}  (shared with other jobs: read ratios, not absolute times)", flush=True)
    server = start_server(port, args.dtype, Path(args.server_log))
    try:
        model, tokenizer = load_model(None, dtype=args.dtype, device="cpu", quiet=True)
        generator = SpeculativeGenerator(model, NGramDrafter())
        url, name = f"http://127.0.0.1:{port}", DEFAULT_MODEL.name
        samples: dict[tuple[str, int], list[dict[str, Any]]] = {}

        async def rounds() -> None:
            hub = StreamHub()
            await run_inprocess(hub, generator, tokenizer, 1, 4)  # warm-up, both sides
            await run_http(url, name, 1, 4)
            for r in range(args.rounds):
                for n in clients:
                    order = ["in-process", "http"] if r % 2 == 0 else ["http", "in-process"]
                    for system in order:
                        if system == "http":
                            result = await run_http(url, name, n, args.tokens)
                        else:
                            result = await run_inprocess(hub, generator, tokenizer, n, args.tokens)
                        samples.setdefault((system, n), []).append(result)
                        print(f"round {r} {system:10s} n={n:3d}: {result['tokens_per_s']:6.1f} tok/s", flush=True)
            await hub.close()

        asyncio.run(rounds())
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = summarise(samples, clients, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def summarise(samples: dict, clients: list[int], args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "tokens": args.tokens, "rounds": args.rounds, "dtype": args.dtype,
                              "model": "SmolLM2-135M-Instruct + n-gram", "rows": []}  # fmt: skip
    print(f"\n{machine()}\nSmolLM2-135M-Instruct {args.dtype}, n-gram drafter, {args.tokens} tokens, "
          f"{args.rounds} rounds (ms; p50 / p99)")  # fmt: skip
    print(f"{'clients':>7} | {'TTFT in-proc':>15} | {'TTFT http':>15} | {'ITL in-proc':>13} | {'ITL http':>13} | "
          f"{'p99 ITL added':>13} | {'tok/s in-proc':>13} | {'http share':>10} | texts equal")  # fmt: skip
    for n in clients:
        local, remote = samples[("in-process", n)], samples[("http", n)]
        row: dict[str, Any] = {"clients": n}
        for label, runs in (("inproc", local), ("http", remote)):
            ttft = [v for run in runs for v in run["ttft"]]
            itl = [v for run in runs for v in run["itl"]]
            row[label] = {"ttft_p50_ms": 1e3 * percentile(ttft, 50), "ttft_p99_ms": 1e3 * percentile(ttft, 99),
                          "itl_p50_ms": 1e3 * percentile(itl, 50), "itl_p99_ms": 1e3 * percentile(itl, 99),
                          "tokens_per_s": statistics.median(run["tokens_per_s"] for run in runs)}  # fmt: skip
        row["share"] = statistics.median(
            h["tokens_per_s"] / i["tokens_per_s"] for h, i in zip(remote, local, strict=False)
        )
        row["p99_itl_added_ms"] = row["http"]["itl_p99_ms"] - row["inproc"]["itl_p99_ms"]
        row["texts_equal"] = all(h["texts"] == i["texts"] for h, i in zip(remote, local, strict=False))
        report["rows"].append(row)
        a, b = row["inproc"], row["http"]
        print(f"{n:>7} | {a['ttft_p50_ms']:6.0f} / {a['ttft_p99_ms']:6.0f} | {b['ttft_p50_ms']:6.0f} / "
              f"{b['ttft_p99_ms']:6.0f} | {a['itl_p50_ms']:5.1f} / {a['itl_p99_ms']:5.1f} | {b['itl_p50_ms']:5.1f} / "
              f"{b['itl_p99_ms']:5.1f} | {row['p99_itl_added_ms']:13.1f} | {a['tokens_per_s']:13.1f} | "
              f"{row['share']:10.3f} | {row['texts_equal']}")  # fmt: skip
    return report


if __name__ == "__main__":
    sys.exit(main())
