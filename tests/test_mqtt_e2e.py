"""The MQTT worker and client against a real mosquitto (one private broker per test, loopback only)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from specdec.streaming.mqtt import (
    REQUEST_TOPIC,
    BrokerConfig,
    RequestLimits,
    StreamClient,
    StreamError,
    Worker,
    WorkerLostError,
    WorkerSettings,
    connect,
    events_topic,
    new_stream_id,
)
from specdec.streaming.mqtt.protocol import decode_event

from mqtt_fixtures import broker, reference_ids, run, tiny_generator, tiny_tokenizer  # noqa: F401

pytestmark = pytest.mark.mqtt

PROMPT = "the quick brown fox"
SETTINGS = WorkerSettings(model_name="tiny-llama", draft_name="ngram", limits=RequestLimits(max_new_tokens_cap=200))


def worker(url: str, *, delay_s: float = 0.0, copy: int = 0, **kw) -> Worker:
    return Worker(url, tiny_generator(delay_s=delay_s, copy=copy), tiny_tokenizer(), settings=SETTINGS, **kw)


def commits(events) -> list[int]:
    return [t for e in events if e.type == "commit" for t in e.token_ids]


def check_stream(events, max_new_tokens: int, prompt: str = PROMPT) -> None:
    """Oracle: seq gap-free from 0, one start, one end, the target's own tokens, texts joining to the decode."""
    assert [e.seq for e in events] == list(range(len(events)))
    assert events[0].type == "start" and events[-1].type == "end"
    assert [e.type for e in events].count("end") == 1
    ids = commits(events)
    assert ids == reference_ids(prompt, max_new_tokens)
    text = "".join(e.text for e in events if e.type == "commit")
    assert text == tiny_tokenizer().decode(ids, skip_special_tokens=True) == events[-1].text


def test_one_request_end_to_end(broker):
    async def body():
        async with worker(broker.url) as w, StreamClient(broker.url) as client:
            events = [e async for e in client.generate(PROMPT, max_new_tokens=40)]
            assert events[0].model == "tiny-llama" and events[0].prompt_tokens > 0
            assert events[-1].finish_reason == "length"
            assert w.counters["served"] == 1
        return events

    check_stream(run(body), 40)


def test_two_workers_share_requests(broker):
    async def body():
        async with worker(broker.url, copy=1) as w1, worker(broker.url, copy=2) as w2:
            async with StreamClient(broker.url) as client:

                async def one(i: int):
                    return [e async for e in client.generate(PROMPT, max_new_tokens=20 + i)]

                results = await asyncio.gather(*(one(i) for i in range(8)))
            counts = (w1.counters["requests"], w2.counters["requests"])
        return results, counts

    results, counts = run(body)
    for i, events in enumerate(results):
        check_stream(events, 20 + i)
    assert sum(counts) == 8 and min(counts) > 0  # each request reached exactly one worker, both took some


def test_fifty_subscribers_get_the_same_commits(broker):
    async def body():
        stream_id = new_stream_id()
        async with worker(broker.url) as _w:
            watchers = [StreamClient(broker.url) for _ in range(50)]
            for c in watchers:
                await c.__aenter__()
            try:
                got = [asyncio.Event() for _ in watchers]

                async def watch(c, ready):
                    it = c.watch(stream_id)
                    first = asyncio.ensure_future(it.__anext__())
                    await asyncio.sleep(0.05)  # subscribed by now (subscribe is acknowledged first)
                    ready.set()
                    return [await first] + [e async for e in it]

                tasks = [asyncio.ensure_future(watch(c, g)) for c, g in zip(watchers, got, strict=False)]
                await asyncio.gather(*(g.wait() for g in got))
                async with StreamClient(broker.url) as client:
                    own = [e async for e in client.generate(PROMPT, stream_id=stream_id, max_new_tokens=60)]
                return own, await asyncio.gather(*tasks)
            finally:
                for c in watchers:
                    await c.__aexit__(None, None, None)

    own, seen = run(body, 60)
    check_stream(own, 60)
    for events in seen:
        assert [(e.seq, e.type) for e in events] == [(e.seq, e.type) for e in own]
        assert commits(events) == commits(own)


def test_broker_restart_mid_stream_loses_nothing(broker):
    async def body():
        async with worker(broker.url, delay_s=0.03) as w, StreamClient(broker.url, idle_resume_s=0.5) as client:
            events = []
            restarted = False
            async for e in client.generate(PROMPT, max_new_tokens=60):
                events.append(e)
                if e.type == "commit" and e.n_committed >= 10 and not restarted:
                    restarted = True
                    await asyncio.to_thread(broker.restart, 0.3)
            assert restarted and client.reconnects >= 1 and w.counters["reconnects"] >= 1
        return events

    check_stream(run(body, 60), 60)


def test_malformed_requests_get_errors_and_the_worker_keeps_serving(broker):
    cap = SETTINGS.limits.max_new_tokens_cap

    async def body():
        async with worker(broker.url, delay_s=0.02) as w, StreamClient(broker.url) as client:
            config = BrokerConfig.from_url(broker.url)
            async with connect(config) as raw:
                # No stream id to answer on: logged and dropped.
                for payload in (b"{oops", b"\xff\x00", b"[]", b'{"prompt": "x"}', b'{"stream_id": "no spaces!"}'):
                    await raw.publish(REQUEST_TOPIC, payload)
                # A stream id is known: error(bad_request) seq 0, then end(error) seq 1 on that stream.
                bad = {
                    "missing": {},
                    "wrong_type": {"prompt": 42},
                    "too_long": {"prompt": "x" * (SETTINGS.limits.max_prompt_chars + 1)},
                    "above_cap": {"prompt": "hi", "max_new_tokens": cap + 1},
                    "bad_temp": {"prompt": "hi", "do_sample": True, "temperature": -1},
                    "vocab": {"input_ids": [10**6]},
                }
                answers = {}
                for name, fields in bad.items():
                    sid = f"{name}-{new_stream_id()[:8]}"
                    await raw.subscribe(events_topic(sid))
                    answers[sid] = name
                    await raw.publish(REQUEST_TOPIC, json.dumps({"stream_id": sid, **fields}).encode())
                got: dict[str, list] = {sid: [] for sid in answers}
                async for message in raw.messages():
                    event = decode_event(message.payload)
                    got[event.stream_id].append(event)
                    if all(evs and evs[-1].type == "end" for evs in got.values()):
                        break
                for sid, evs in got.items():
                    assert [(e.seq, e.type) for e in evs] == [(0, "error"), (1, "end")], answers[sid]
                    assert evs[0].code == "bad_request" and evs[1].finish_reason == "error"
                # A duplicate of a live stream id with another request: an out-of-band notice, the stream unharmed.
                sid = new_stream_id()
                live = client.generate(PROMPT, stream_id=sid, max_new_tokens=30)
                first = await live.__anext__()
                await raw.subscribe(events_topic(sid))
                await raw.publish(REQUEST_TOPIC, json.dumps({"stream_id": sid, "prompt": "other"}).encode())
                rest = [e async for e in live]
                check_stream([first] + rest, 30)
            # The client raises on an error event.
            with pytest.raises(StreamError) as info:
                async for _ in client.generate("hi", max_new_tokens=cap + 1):
                    pass
            assert info.value.code == "bad_request"
            events = [e async for e in client.generate(PROMPT, max_new_tokens=12)]
            assert w.counters["rejected"] >= 12
        return events

    check_stream(run(body, 60), 12)


def test_cancel_over_the_control_topic(broker):
    async def body():
        async with worker(broker.url, delay_s=0.03) as _w, StreamClient(broker.url) as client:
            sid = new_stream_id()
            events = []
            async for e in client.generate(PROMPT, stream_id=sid, max_new_tokens=150):
                events.append(e)
                if e.type == "commit" and len(events) == 4:
                    await client.cancel(sid)
        return events

    events = run(body)
    assert events[-1].type == "end" and events[-1].finish_reason == "cancelled"
    n = len(commits(events))
    assert 0 < n < 150 and commits(events) == reference_ids(PROMPT, 150)[:n]


def test_late_subscriber_resumes_from_the_start(broker):
    async def body():
        async with worker(broker.url) as _w, StreamClient(broker.url) as client:
            sid = new_stream_id()
            own = [e async for e in client.generate(PROMPT, stream_id=sid, max_new_tokens=25)]
            async with StreamClient(broker.url) as late:
                replayed = [e async for e in late.watch(sid, replay=True)]
                tail = [e async for e in late.watch(sid, after_seq=3, replay=True)]
        return own, replayed, tail

    own, replayed, tail = run(body)
    assert [e.seq for e in replayed] == [e.seq for e in own] and commits(replayed) == commits(own)
    assert [e.seq for e in tail] == [e.seq for e in own][4:]


def test_stock_mosquitto_sub_sees_valid_events(broker):
    sub_binary = "mosquitto_sub"
    if subprocess.run(["which", sub_binary], capture_output=True).returncode != 0:
        pytest.skip("mosquitto_sub (Debian: mosquitto-clients) is not installed")

    async def body():
        sid = new_stream_id()
        topic = events_topic(sid)
        proc = await asyncio.create_subprocess_exec(
            sub_binary, "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5", "-q", "1", "-t", topic,
            stdout=asyncio.subprocess.PIPE,
        )
        lines: list[dict] = []
        try:
            async with worker(broker.url) as _w, StreamClient(broker.url) as client, connect(
                BrokerConfig.from_url(broker.url)
            ) as raw:
                while True:  # wait until mosquitto_sub is surely subscribed: it prints our probe
                    await raw.publish(topic, b'"probe"')
                    try:
                        line = await asyncio.wait_for(proc.stdout.readline(), 0.2)
                    except TimeoutError:
                        continue
                    if line.strip() == b'"probe"':
                        break
                await asyncio.sleep(0.1)
                while True:  # drain any extra probes
                    try:
                        extra = await asyncio.wait_for(proc.stdout.readline(), 0.05)
                    except TimeoutError:
                        break
                    assert extra.strip() == b'"probe"'
                own = [e async for e in client.generate(PROMPT, stream_id=sid, max_new_tokens=30)]
                while not lines or lines[-1]["type"] != "end":
                    lines.append(json.loads(await asyncio.wait_for(proc.stdout.readline(), 10)))
        finally:
            proc.terminate()
            await proc.wait()
        return own, lines

    own, lines = run(body)
    assert all(line["v"] == 1 and line["stream_id"] == own[0].stream_id for line in lines)
    assert sorted({line["seq"] for line in lines}) == [e.seq for e in own]
    texts = {line["seq"]: line["text"] for line in lines if line["type"] == "commit"}
    assert "".join(texts[k] for k in sorted(texts)) == own[-1].text == tiny_tokenizer().decode(commits(own))


_WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from mqtt_fixtures import tiny_generator, tiny_tokenizer
    from specdec.streaming.mqtt import Worker, WorkerSettings

    async def main():
        async with Worker({url!r}, tiny_generator(delay_s=0.05), tiny_tokenizer(), settings=WorkerSettings()):
            print("ready", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
    """
)


def test_killed_worker_s_will_reaches_the_stream(broker):
    script = _WORKER_SCRIPT.format(tests=str(Path(__file__).parent), url=broker.url)

    async def body():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        try:
            line = b"\n"
            while line and line.strip() != b"ready":  # the tokenizer trainer prints blank lines first
                line = await asyncio.wait_for(proc.stdout.readline(), 150)
            assert line.strip() == b"ready"
            async with StreamClient(broker.url, worker_lost_grace_s=1.0) as client:
                events = []
                with pytest.raises(WorkerLostError) as info:
                    async for e in client.generate(PROMPT, max_new_tokens=150):
                        events.append(e)
                        if e.type == "commit" and len(events) == 3:
                            proc.send_signal(signal.SIGKILL)
            return events, info.value
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    events, error = run(body, 180)  # the worker process imports torch first: slow on a loaded machine
    assert error.code == "worker_lost" and error.retryable
    assert events[0].type == "start" and all(e.type != "end" for e in events)
