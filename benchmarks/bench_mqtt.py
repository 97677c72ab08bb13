"""Benchmark: token streams through a local mosquitto vs in-process (not a test; prints a table).

    .venv/bin/python benchmarks/bench_mqtt.py [--tokens 256] [--reps 3]

For each model size it interleaves, ``--reps`` times:
- ``in-process``: ``StreamHub.start`` + one in-process subscriber;
- ``mqtt-N`` (N = 1, 10, 100): a :class:`Worker` in this process publishes the
  stream to a private mosquitto on 127.0.0.1; N subscribers, each with its own
  MQTT connection, run in a separate process (one event loop) and record when
  each commit arrives.

Reported: tokens/s (completion tokens over the time from request to the last
subscriber's ``end``) and its ratio to in-process, and the latency from a
commit's creation (the event's ``ts``, stamped in the generation thread right
after the verified block lands) to its receipt by a remote subscriber, p50/p99
over every commit and subscriber. One machine, one clock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------- subscriber process


async def _subscribers(url: str, stream_id: str, n: int) -> None:
    from streaming.mqtt.protocol import events_topic
    from streaming.mqtt.transport import BrokerConfig, connect

    config = BrokerConfig.from_url(url)
    latencies: list[float] = []
    ends: list[float] = []
    tokens: list[int] = []

    async def one(transport) -> None:
        count = 0
        async for message in transport.messages():
            now = time.time()
            event = json.loads(message.payload)
            if event["type"] == "commit":
                latencies.append(now - event["ts"])
                count += len(event["token_ids"])
            elif event["type"] == "end":
                ends.append(now)
                tokens.append(count)
                return

    transports = [connect(config) for _ in range(n)]
    for t in transports:
        await t.__aenter__()
        await t.subscribe(events_topic(stream_id))
    print("ready", flush=True)
    await asyncio.wait_for(asyncio.gather(*(one(t) for t in transports)), 120)
    for t in transports:
        await t.__aexit__(None, None, None)
    print(json.dumps({"latencies": latencies, "last_end": max(ends), "tokens": tokens}), flush=True)


# ----------------------------------------------------------------------------- driver


def _model(hidden: int, layers: int, vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    return model


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def _in_process(hub, gen, tok, ids, tokens: int) -> tuple[float, list[float]]:
    t0 = time.time()
    stream = hub.start(gen, ids, tokenizer=tok, max_new_tokens=tokens)
    lat: list[float] = []
    n = 0
    async for event in stream.subscribe():
        if event.type == "commit":
            lat.append(time.time() - event.ts)
            n += len(event.token_ids)
    return n / (time.time() - t0), lat


async def _through_broker(url: str, raw, ids, tokens: int, n_subs: int) -> tuple[float, list[float]]:
    from streaming.mqtt import REQUEST_TOPIC, new_stream_id
    from streaming.mqtt.protocol import encode_json

    stream_id = new_stream_id()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--subscriber", url, stream_id, str(n_subs), stdout=asyncio.subprocess.PIPE,
        limit=1 << 26,
    )
    assert (await proc.stdout.readline()).strip() == b"ready"
    t0 = time.time()
    await raw.publish(REQUEST_TOPIC, encode_json({"stream_id": stream_id, "input_ids": ids, "max_new_tokens": tokens}))
    result = json.loads(await proc.stdout.readline())
    await proc.wait()
    assert all(t == tokens for t in result["tokens"]), result["tokens"]
    return tokens / (result["last_end"] - t0), result["latencies"]


async def _bench(args) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from mqtt_fixtures import tiny_tokenizer  # the offline byte-level BPE of the tests

    from drafts import NGramDrafter
    from specdec import SpeculativeGenerator
    from streaming.hub import StreamHub
    from streaming.mqtt import BrokerConfig, Worker, WorkerSettings, connect
    from streaming.mqtt.broker import LocalMosquitto
    from streaming.mqtt.protocol import RequestLimits

    import torch

    torch.set_num_threads(args.threads)  # leave cores to the broker and the subscriber process
    tok = tiny_tokenizer()
    ids = tok("the quick brown fox jumps over the lazy dog")["input_ids"]
    sizes = {"tiny (hidden 32, 2 layers)": (32, 2), "small (hidden 256, 6 layers)": (256, 6)}
    systems = ["in-process", "mqtt-1", "mqtt-10", "mqtt-100"]
    rows = []
    with LocalMosquitto() as broker:
        for label, (hidden, layers) in sizes.items():
            gen = SpeculativeGenerator(_model(hidden, layers, len(tok)), NGramDrafter(num_draft_tokens=4))
            hub = StreamHub(retention_s=0)
            settings = WorkerSettings(limits=RequestLimits(max_new_tokens_cap=args.tokens))
            results: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in systems}
            async with Worker(broker.url, gen, tok, settings=settings) as _w, connect(
                BrokerConfig.from_url(broker.url)
            ) as raw:
                await _in_process(hub, gen, tok, ids, 32)  # warm up
                await _through_broker(broker.url, raw, ids, 32, 1)
                for _ in range(args.reps):
                    for system in systems:
                        if system == "in-process":
                            tps, lat = await _in_process(hub, gen, tok, ids, args.tokens)
                        else:
                            tps, lat = await _through_broker(broker.url, raw, ids, args.tokens, int(system.split("-")[1]))
                        results[system][0].append(tps)
                        print(f"  {label} {system}: {tps:.0f} tokens/s", file=sys.stderr, flush=True)
                        results[system][1].extend(lat)
            base = statistics.median(results["in-process"][0])
            for system in systems:
                tps = statistics.median(results[system][0])
                lat = results[system][1]
                rows.append((label, system, tps, tps / base, _pct(lat, 0.5) * 1e3, _pct(lat, 0.99) * 1e3))
    print(f"\n{args.tokens} tokens per stream, median of {args.reps} interleaved reps; latency = commit ts -> receipt")
    print(f"{'model':30} {'system':11} {'tokens/s':>9} {'vs in-proc':>10} {'p50 ms':>7} {'p99 ms':>7}")
    for label, system, tps, ratio, p50, p99 in rows:
        print(f"{label:30} {system:11} {tps:9.0f} {ratio:10.2f} {p50:7.2f} {p99:7.2f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber":
        asyncio.run(_subscribers(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for generation")
    asyncio.run(_bench(parser.parse_args()))


if __name__ == "__main__":
    main()
