"""Benchmark: token streams through a local mosquitto vs in-process (not a test).

    flock /tmp/specdec-bench.lock .venv/bin/python benchmarks/bench_mqtt.py \\
        [--models tiny,small,smollm2] [--subscribers 1,10,100] [--tokens 128] [--rounds 3] \\
        [--json docs/bench_mqtt.json]

Systems, run on the same generator object, interleaved in rounds (the order
rotates every round), medians reported:

- ``in-process``: ``StreamHub.start`` and one asyncio subscriber in this
  process: the baseline.
- ``mqtt-N`` (N = 1, 10, 100): a :class:`specdec.streaming.mqtt.Worker` in this
  process, in its default configuration (per-stream guard connection, QoS 1,
  message expiry), serving a private mosquitto on 127.0.0.1. The request is
  published over MQTT by this process; N stock ``mosquitto_sub`` processes
  (one MQTT connection each, QoS 1) receive the events and stamp each message
  with their own receipt time (``-F '%U %p'``).

Definitions:

- **throughput** = completion tokens / (time from just before the request is
  published — ``hub.start`` for in-process — until the *last* subscriber has
  the ``end`` event). ``vs in-proc`` divides the median of an MQTT system by the
  median of in-process on the same model.
- **latency** = receipt time at the subscriber − the commit event's ``ts``
  (stamped in the generation thread when the verified block becomes an event).
  Every commit at every subscriber in every round is one sample; p50 / p99 of
  the pooled samples. Same machine, same clock.

Every MQTT run is checked: each subscriber must see the gap-free sequence of
events whose commits join to the in-process completion.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The corpus the MQTT tests train their offline tokenizer on (``tests/mqtt_fixtures.py``): same tokenizer, same model.
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "héllo wörld, café naïve über straße 🙂",
    "a stream of tokens flows through the broker to every subscriber",
    "speculative decoding drafts ahead and the target verifies",
] * 8


# ----------------------------------------------------------------------------- subscribers


def cpu_seconds(pids: list[int]) -> float:
    """CPU time the processes have run so far (all threads; /proc/PID/schedstat, nanoseconds)."""
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


class MosquittoSubGroup:
    """``n`` ``mosquitto_sub`` processes on one topic, each writing ``<receipt unix time> <payload>`` lines."""

    def __init__(self, host: str, port: int, topic: str, n: int, folder: Path) -> None:
        self.topic = topic
        self.paths = [folder / f"sub{i}.txt" for i in range(n)]
        binary = shutil.which("mosquitto_sub")
        if binary is None:
            raise SystemExit("mosquitto_sub is not installed (Debian/Ubuntu: apt-get install mosquitto-clients)")
        command = [binary, "-h", host, "-p", str(port), "-V", "mqttv5", "-q", "1", "-t", topic, "-F", "%U %p"]
        self.procs: list[subprocess.Popen] = []
        try:
            for path in self.paths:
                with open(path, "wb") as out:
                    self.procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL))
        except BaseException:  # e.g. out of processes: stop the ones already running
            self.close()
            raise

    def _all_contain(self, needle: bytes) -> bool:
        for path in self.paths:
            with open(path, "rb") as f:
                if needle not in f.read():
                    return False
        return True

    async def wait_subscribed(self, raw: Any) -> None:
        """Publish a probe until every subscriber printed it (so all are subscribed before the request)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await raw.publish(self.topic, b'"probe"')
            await asyncio.sleep(0.05)
            if self._all_contain(b'"probe"'):
                return
        raise RuntimeError(f"mosquitto_sub processes did not subscribe to {self.topic} in 30 s")

    async def wait_end(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._all_contain(b'"type":"end"'):
            if time.monotonic() > deadline:
                raise RuntimeError("a subscriber never received the end event")
            await asyncio.sleep(0.02)

    def received(self) -> list[list[tuple[float, dict]]]:
        """Per subscriber: (receipt time, event) for every event message, probes skipped."""
        out = []
        for path in self.paths:
            rows = []
            for line in path.read_bytes().splitlines():
                stamp, _, payload = line.partition(b" ")
                data = json.loads(payload)
                if isinstance(data, dict):
                    rows.append((float(stamp), data))
            out.append(rows)
        return out

    def cpu_seconds(self) -> float:
        return cpu_seconds([proc.pid for proc in self.procs])

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ----------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    label: str
    generator: Any
    tokenizer: Any
    input_ids: list[int]
    model_name: str
    notes: str = ""


def make_workload(name: str) -> Workload:
    from specdec import SpeculativeGenerator
    from specdec.drafts import NGramDrafter

    if name in ("tiny", "small"):
        from specdec.bench import byte_level_bpe, random_llama

        tok = byte_level_bpe(CORPUS, vocab_size=320)
        hidden, layers = (32, 2) if name == "tiny" else (256, 6)
        model = random_llama(
            vocab_size=len(tok), hidden_size=hidden, num_layers=layers, num_kv_heads=2, special_tokens=False, seed=0
        )
        ids = tok("the quick brown fox jumps over the lazy dog")["input_ids"]
        label = f"{name} llama (hidden {hidden}, {layers} layers, fp32, random weights)"
        gen = SpeculativeGenerator(model, NGramDrafter(num_draft_tokens=4))
        return Workload(label, gen, tok, ids, f"tiny-llama-h{hidden}", "n-gram drafter, k=4; no EOS")
    if name == "smollm2":
        import torch

        from specdec.bench import PROMPTS
        from specdec.models import load_model

        model, tok = load_model(None, dtype=torch.bfloat16)
        prompt = PROMPTS[0]  # edit-email: grounded, so the n-gram drafter has something to find
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt.text}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        gen = SpeculativeGenerator(model, NGramDrafter())  # what `specdec serve` builds with no --target/--draft
        return Workload(
            "SmolLM2-135M-Instruct (bf16, n-gram drafter defaults)",
            gen,
            tok,
            list(ids),
            "SmolLM2-135M-Instruct",
            f"chat prompt {prompt.name!r}; stops at EOS",
        )
    raise SystemExit(f"unknown model {name!r}; pick from tiny, small, smollm2")


# ----------------------------------------------------------------------------- one run


@dataclass
class Run:
    tokens: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    events: int = 0  # events in the stream
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds during the run, by process kind

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


async def run_in_process(hub: Any, w: Workload, max_new_tokens: int) -> Run:
    cpu0 = time.process_time()
    t0 = time.time()
    stream = hub.start(w.generator, w.input_ids, tokenizer=w.tokenizer, max_new_tokens=max_new_tokens)
    run = Run(0, 0.0)
    async for event in stream.subscribe():
        now = time.time()
        run.events += 1
        if event.type == "commit":
            run.latencies.append(now - event.ts)
            run.token_ids.extend(event.token_ids)
        elif event.type == "end":
            run.seconds = now - t0
    run.tokens = len(run.token_ids)
    run.cpu = {"generating process": time.process_time() - cpu0}
    return run


async def run_mqtt(broker: Any, raw: Any, worker: Any, w: Workload, max_new_tokens: int, n_subs: int) -> Run:
    from specdec.streaming.mqtt import REQUEST_TOPIC, events_topic, new_stream_id
    from specdec.streaming.mqtt.protocol import encode_json

    stream_id = new_stream_id()
    folder = Path(tempfile.mkdtemp(prefix="specdec-bench-subs-"))
    group = MosquittoSubGroup(broker.host, broker.port, events_topic(stream_id), n_subs, folder)
    try:
        await group.wait_subscribed(raw)
        await asyncio.sleep(0.2)  # let the probes drain and the machine settle
        served = worker.counters["served"]
        request = {"stream_id": stream_id, "input_ids": w.input_ids, "max_new_tokens": max_new_tokens}
        cpu0 = (time.process_time(), cpu_seconds([broker.pid]), group.cpu_seconds())
        t0 = time.time()
        await raw.publish(REQUEST_TOPIC, encode_json(request))
        while worker.counters["served"] == served:  # the worker published the end; nothing polls files meanwhile
            await asyncio.sleep(0.01)
        await group.wait_end()
        cpu = {
            "generating process": time.process_time() - cpu0[0],
            "broker": cpu_seconds([broker.pid]) - cpu0[1],
            "subscribers": group.cpu_seconds() - cpu0[2],
        }
    finally:
        group.close()
    received = group.received()
    shutil.rmtree(folder, ignore_errors=True)
    run = Run(0, 0.0, cpu=cpu)
    last_end = 0.0
    reference: list[int] | None = None
    for rows in received:
        seen: dict[int, tuple[float, dict]] = {}
        for stamp, event in rows:
            seen.setdefault(event["seq"], (stamp, event))  # QoS 1 may redeliver: first receipt counts
        seqs = sorted(s for s in seen if s >= 0)
        assert seqs == list(range(len(seqs))), f"gap in the events a subscriber received: {seqs}"
        ids = [t for s in seqs if seen[s][1]["type"] == "commit" for t in seen[s][1]["token_ids"]]
        reference = ids if reference is None else reference
        assert ids == reference, "two subscribers saw different commits"
        for s in seqs:
            stamp, event = seen[s]
            if event["type"] == "commit":
                run.latencies.append(stamp - event["ts"])
            elif event["type"] == "end":
                last_end = max(last_end, stamp)
    run.events = len(seqs)
    run.token_ids = reference or []
    run.tokens = len(run.token_ids)
    run.seconds = last_end - t0
    return run


# ----------------------------------------------------------------------------- driver


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def _machine() -> dict[str, Any]:
    from importlib.metadata import version

    import torch
    import transformers

    from specdec.bench import cpu_model
    from specdec.streaming.mqtt.broker import find_mosquitto

    mosquitto = subprocess.run([find_mosquitto() or "mosquitto", "-h"], capture_output=True, text=True)
    first = (mosquitto.stdout or mosquitto.stderr).splitlines()[0] if (mosquitto.stdout or mosquitto.stderr) else "?"
    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "aiomqtt": version("aiomqtt"),
        "paho-mqtt": version("paho-mqtt"),
        "mosquitto": first.strip(),
        "load_avg_at_start": os.getloadavg(),
    }


async def bench_model(name: str, args: argparse.Namespace, broker: Any) -> list[dict[str, Any]]:
    from specdec.streaming.hub import StreamHub
    from specdec.streaming.mqtt import BrokerConfig, Worker, WorkerSettings, connect
    from specdec.streaming.mqtt.protocol import RequestLimits

    w = make_workload(name)
    systems = ["in-process"] + [f"mqtt-{n}" for n in args.subscribers]
    hub = StreamHub(retention_s=0)
    settings = WorkerSettings(
        model_name=w.model_name, draft_name="ngram", limits=RequestLimits(max_new_tokens_cap=max(args.tokens, 1024))
    )
    runs: dict[str, list[Run]] = {s: [] for s in systems}
    async with (
        Worker(broker.url, w.generator, w.tokenizer, settings=settings) as worker,
        connect(BrokerConfig.from_url(broker.url)) as raw,
    ):
        await run_in_process(hub, w, 16)  # warm up both paths
        await run_mqtt(broker, raw, worker, w, 16, 1)
        for r in range(args.rounds):
            order = systems[r % len(systems) :] + systems[: r % len(systems)]
            for system in order:
                if system == "in-process":
                    run = await run_in_process(hub, w, args.tokens)
                else:
                    run = await run_mqtt(broker, raw, worker, w, args.tokens, int(system.split("-")[1]))
                runs[system].append(run)
                print(
                    f"  [{name}] round {r + 1} {system:10} {run.tokens} tokens {run.tokens_per_s:8.1f} tok/s "
                    f"p99 {_pct(run.latencies, 0.99) * 1e3:7.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    reference = runs["in-process"][0].token_ids
    for system in systems:
        for run in runs[system]:
            assert run.token_ids == reference, f"{system} produced other tokens than in-process"
    base = statistics.median(r.tokens_per_s for r in runs["in-process"])
    base_by_round = [r.tokens_per_s for r in runs["in-process"]]
    rows = []
    for system in systems:
        tps = [r.tokens_per_s for r in runs[system]]
        lat = [x for r in runs[system] for x in r.latencies]
        rows.append(
            {
                "model": name,
                "label": w.label,
                "notes": w.notes,
                "system": system,
                "subscribers": 1 if system == "in-process" else int(system.split("-")[1]),
                "completion_tokens": runs[system][0].tokens,
                "tokens_per_s_median": statistics.median(tps),
                "tokens_per_s_rounds": tps,
                "vs_in_process": statistics.median(tps) / base,
                # the same ratio taken within each round, then the median: steadier when the machine's load drifts
                "vs_in_process_paired": statistics.median(t / b for t, b in zip(tps, base_by_round, strict=False)),
                "latency_ms_p50": _pct(lat, 0.5) * 1e3,
                "latency_ms_p99": _pct(lat, 0.99) * 1e3,
                "latency_ms_max": max(lat) * 1e3,
                "latency_samples": len(lat),
                "p99_ms_per_round": [_pct(r.latencies, 0.99) * 1e3 for r in runs[system]],
                "events_per_stream": runs[system][0].events,
                "cpu_s_median": {
                    kind: statistics.median(r.cpu[kind] for r in runs[system]) for kind in runs[system][0].cpu
                },
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nmax_new_tokens {args.tokens}, median of {args.rounds} interleaved rounds; latency = commit ts -> receipt")
    print("CPU s = median CPU seconds per stream: generating process / broker / all subscriber processes")
    print(
        f"{'model':8} {'system':10} {'tokens':>6} {'events':>6} {'tok/s':>8} {'vs in-proc':>10} {'paired':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7}  CPU s"
    )
    for row in rows:
        cpu = row["cpu_s_median"]
        cpu_text = " / ".join(f"{cpu[k]:.2f}" for k in ("generating process", "broker", "subscribers") if k in cpu)
        print(
            f"{row['model']:8} {row['system']:10} {row['completion_tokens']:6d} {row['events_per_stream']:6d} "
            f"{row['tokens_per_s_median']:8.1f} {row['vs_in_process']:10.2f} {row['vs_in_process_paired']:6.2f} "
            f"{row['latency_ms_p50']:7.2f} "
            f"{row['latency_ms_p99']:7.2f}  {cpu_text}"
        )


async def main_async(args: argparse.Namespace) -> None:
    import torch

    from specdec.streaming.mqtt.broker import LocalMosquitto

    torch.set_num_threads(args.threads)
    machine = _machine()
    rows: list[dict[str, Any]] = []
    started = time.time()
    with LocalMosquitto() as broker:  # loopback only, its own config file
        for name in args.models:
            rows.extend(await bench_model(name, args, broker))
    print_table(rows, args)
    print(
        f"machine: {machine['cpu']} (torch CPU capability {machine['cpu_capability']}), {machine['cores']} cores, "
        f"{args.threads} torch threads"
    )
    if args.json:
        payload = {
            "benchmark": "bench_mqtt",
            "command": " ".join(sys.argv),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "wall_s": time.time() - started,
            "machine": {**machine, "load_avg_at_end": os.getloadavg()},
            "settings": {"max_new_tokens": args.tokens, "rounds": args.rounds, "torch_threads": args.threads},
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=lambda s: s.split(","), default=["tiny", "small", "smollm2"])
    parser.add_argument("--subscribers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 100])
    parser.add_argument("--tokens", type=int, default=128, help="max_new_tokens per stream")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for generation (leave a core)")
    parser.add_argument("--json", default=None, help="also write the results here")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
