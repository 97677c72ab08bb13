"""Operating the MQTT layer (issue 11): a worker stops gracefully, "cannot connect" differs from
"connection lost", the client times out when no worker answers, the client imports light, and a broker
we start logs where it can and never outlives us. Real mosquitto, real clients, real processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from specdec import SpecDecError
from specdec.streaming.mqtt import (
    REQUEST_TOPIC,
    BrokerConfig,
    BrokerUnreachableError,
    NoWorkerError,
    RequestLimits,
    StreamClient,
    StreamError,
    TransportError,
    Worker,
    WorkerSettings,
    connect,
    events_topic,
    new_stream_id,
    worker_status_topic,
)
from specdec.streaming.mqtt.broker import LocalMosquitto, find_mosquitto, free_port
from specdec.streaming.mqtt.protocol import decode_event, encode_json

from mqtt_fixtures import broker, reference_ids, run, tiny_generator, tiny_tokenizer  # noqa: F401

PROMPT = "the quick brown fox"
SETTINGS = WorkerSettings(model_name="tiny-llama", draft_name="ngram", limits=RequestLimits(max_new_tokens_cap=300))


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _collect_until_ends(raw, sids: set[str], quiet_s: float) -> dict[str, list]:
    """Every message on the streams' topics until each has its end, then ``quiet_s`` more (to catch a Will)."""
    got: dict[str, list] = {sid: [] for sid in sids}
    deadline = None
    iterator = raw.messages().__aiter__()
    while True:
        timeout = 30.0 if deadline is None else deadline - time.monotonic()
        if timeout <= 0:
            return got
        try:
            message = await asyncio.wait_for(iterator.__anext__(), timeout)
        except TimeoutError:
            return got
        event = decode_event(message.payload)
        got[event.stream_id].append(event)
        if deadline is None and all(any(e.type == "end" for e in evs) for evs in got.values()):
            deadline = time.monotonic() + quiet_s


@pytest.mark.parametrize("how", ["stop", "cancel"])
def test_a_stopped_worker_ends_every_stream_and_fires_no_will(broker, how):  # noqa: F811
    async def body():
        worker = Worker(broker.url, tiny_generator(delay_s=0.03), tiny_tokenizer(), settings=SETTINGS)
        runner = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.ready.wait(), 20)
        assert worker.status == "online"
        async with connect(BrokerConfig.from_url(broker.url)) as raw:
            sids = {new_stream_id(), new_stream_id()}  # one generating, one queued behind it
            for sid in sids:
                await raw.subscribe(events_topic(sid))
            for sid in sorted(sids):
                await raw.publish(REQUEST_TOPIC, encode_json({"stream_id": sid, "prompt": PROMPT,
                                                              "max_new_tokens": 250}))
            collector = asyncio.ensure_future(_collect_until_ends(raw, sids, quiet_s=1.5))
            await asyncio.sleep(0.6)  # the first stream is generating
            stopped_at = time.monotonic()
            if how == "stop":
                worker.stop()
                await runner  # returns normally
            else:
                runner.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await runner
            stop_s = time.monotonic() - stopped_at
            got = await collector
        async with connect(BrokerConfig.from_url(broker.url)) as raw:
            await raw.subscribe(worker_status_topic(worker.worker_id))
            status = json.loads((await asyncio.wait_for(raw.messages().__anext__(), 5)).payload)
        return worker, got, stop_s, status

    worker, got, stop_s, status = run(body, 60)
    assert worker.status == "stopped" and stop_s < 8
    assert status["state"] == "offline" and status["reason"] == "stopped"  # retained, not the "lost" Will
    reasons = []
    for sid, events in got.items():
        assert all(e.seq >= 0 for e in events), f"{sid}: a Will (worker_lost) fired: {events[-1]}"
        assert [e.seq for e in events] == list(range(len(events)))  # nothing missing, nothing after the end
        assert events[-1].type == "end" and [e.type for e in events].count("end") == 1
        ids = [t for e in events if e.type == "commit" for t in e.token_ids]
        assert ids == reference_ids(PROMPT, 250)[: len(ids)]
        reasons.append(events[-1].finish_reason)
    assert sorted(reasons) == ["cancelled", "cancelled"]


def test_serve_handles_sigterm_and_stops_the_broker_it_started(tmp_path):
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from mqtt_fixtures import tiny_generator, tiny_tokenizer
        from specdec.streaming.mqtt import serve

        asyncio.run(serve("mqtt://127.0.0.1:{port}", tiny_generator(delay_s=0.03), tiny_tokenizer(),
                          model_name="tiny", draft_name="ngram", start_broker=True, handle_signals=True,
                          on_ready=lambda w: print("ready", w.worker_id, flush=True)))
        print("returned", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 90
        line = b""
        while not line.startswith(b"ready"):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode(errors="replace")
            line = proc.stdout.readline().strip()

        async def body():
            async with StreamClient(f"mqtt://127.0.0.1:{port}") as client:
                events = []
                async for e in client.generate(PROMPT, max_new_tokens=250):
                    events.append(e)
                    if e.type == "commit" and len(events) == 3:
                        proc.send_signal(signal.SIGTERM)
                return events

        events = run(body, 60)
        assert proc.wait(timeout=30) == 0
        assert b"returned" in proc.stdout.read()
        assert events[-1].type == "end" and events[-1].finish_reason == "cancelled"
        assert [e.seq for e in events] == list(range(len(events)))
        assert not _listening(port)  # the broker it started went with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_client_times_out_when_no_worker_answers(broker):  # noqa: F811
    async def body():
        async with StreamClient(broker.url) as client:
            started = time.monotonic()
            with pytest.raises(NoWorkerError) as info:
                async for _ in client.generate(PROMPT, max_new_tokens=5, timeout=0.5):
                    pass
            waited = time.monotonic() - started
            with pytest.raises(ValueError, match="timeout"):
                async for _ in client.generate(PROMPT, timeout=0):
                    pass
        return info.value, waited

    error, waited = run(body)
    assert isinstance(error, StreamError) and isinstance(error, SpecDecError)
    assert error.code == "no_worker" and error.retryable and "no worker answered" in str(error)
    assert 0.4 < waited < 3.0


def test_cannot_connect_is_not_connection_lost(caplog):
    port = free_port()  # nobody listens here
    url = f"mqtt://127.0.0.1:{port}"

    async def body():
        with pytest.raises(BrokerUnreachableError, match="start-broker") as info:
            async with StreamClient(url):
                pass
        worker = Worker(url, tiny_generator(), tiny_tokenizer(), settings=SETTINGS)
        with caplog.at_level(logging.WARNING, logger="specdec.streaming.mqtt"):
            with pytest.raises(asyncio.TimeoutError):  # a worker keeps trying: the broker may come up later
                await asyncio.wait_for(worker.run(), 1.0)
        return info.value

    error = run(body)
    assert isinstance(error, TransportError) and "cannot connect" in str(error)
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot connect" in m and "start-broker" in m for m in messages), messages
    assert not any("lost" in m for m in messages), messages


def test_importing_the_client_loads_no_torch():
    probe = textwrap.dedent(
        """
        import json, sys
        import specdec
        core = {m for m in ("torch", "transformers") if m in sys.modules}
        before = set(sys.modules)
        from specdec.streaming.mqtt.client import StreamClient
        from specdec.streaming.mqtt import StreamClient, NoWorkerError
        added = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in ("torch", "transformers"))
        print(json.dumps({"core": sorted(core), "added": added, "hub": "specdec.streaming.hub" in sys.modules}))
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["added"] == [] and not result["hub"]  # the streaming side adds nothing heavy
    assert result["core"] == []  # and `import specdec` loads its public names lazily


def test_local_broker_logs_to_a_file_it_can_write_and_never_reuses_a_taken_port():
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    with LocalMosquitto() as first:
        assert "log_dest stderr" in first.config_path.read_text()  # we open the file; mosquitto needs no rights
        assert first.log_path.exists()
        with pytest.raises(TransportError, match="already listens"):
            LocalMosquitto(port=first.port).start()
        port = first.port
    assert not _listening(port)


def test_resume_replays_provisionals_so_the_sequence_stays_gap_free(broker):  # noqa: F811
    async def body():
        async with Worker(broker.url, tiny_generator(), tiny_tokenizer(), settings=SETTINGS), StreamClient(
            broker.url
        ) as client:
            sid = new_stream_id()
            own = [e async for e in client.generate(PROMPT, stream_id=sid, max_new_tokens=30, provisional=True)]
            async with StreamClient(broker.url, max_resume_attempts=2) as late:
                replayed = [e async for e in late.watch(sid, replay=True)]
        return own, replayed

    own, replayed = run(body)
    assert any(e.type == "provisional" for e in own)
    assert [e.seq for e in own] == list(range(len(own)))
    assert [(e.seq, e.type) for e in replayed] == [(e.seq, e.type) for e in own]


def test_worker_settings_are_validated():
    for bad in ({"shutdown_timeout_s": 0}, {"max_open_streams": 0}, {"linger_s": -1}, {"event_expiry_s": "600"},
                {"will_delay_s": True}):
        with pytest.raises(ValueError, match=next(iter(bad))) as info:
            WorkerSettings(**bad)
        assert isinstance(info.value, SpecDecError)
