"""Deployment paths against a real mosquitto: the example config (passwords, ACL, TLS) and ``serve --start-broker``.

Everything listens on free 127.0.0.1 ports; nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specdec.streaming.mqtt import (
    REQUEST_TOPIC,
    BrokerConfig,
    RequestLimits,
    StreamClient,
    TransportError,
    Worker,
    WorkerSettings,
    connect,
    control_topic,
    events_topic,
    new_stream_id,
    serve,
)
from specdec.streaming.mqtt.broker import free_port
from specdec.streaming.mqtt.protocol import decode_event, encode_json

from mqtt_fixtures import (  # noqa: F401 - secured_broker is a fixture
    USERS,
    need_binary,
    reference_ids,
    run,
    secure_config,
    secured_broker,
    tiny_generator,
    tiny_model,
    tiny_tokenizer,
)

pytestmark = pytest.mark.mqtt

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "mosquitto"
PROMPT = "the quick brown fox"
SETTINGS = WorkerSettings(model_name="tiny-llama", draft_name="ngram", limits=RequestLimits(max_new_tokens_cap=64))


def test_example_config_passwords_acl_and_tls(secured_broker):
    broker = secured_broker
    worker_config = secure_config(broker, "worker1", password=USERS["worker1"])
    client_tls = secure_config(broker, "client1", password=USERS["client1"], tls=True)
    client_plain = secure_config(broker, "client1", password=USERS["client1"])

    async def body():
        # No credentials, a wrong password, or TLS with no CA to trust: refused at connect.
        for config in (
            secure_config(broker, None),
            secure_config(broker, "client1", password="wrong"),
            BrokerConfig.from_url(f"mqtts://127.0.0.1:{broker.tls_port}", username="client1", password="x"),
        ):
            with pytest.raises(TransportError):
                async with connect(config):
                    pass
        async with Worker(worker_config, tiny_generator(), tiny_tokenizer(), settings=SETTINGS):
            # The authorised client, over TLS, requests and reads its stream.
            async with StreamClient(client_tls) as client:
                events = [e async for e in client.generate(PROMPT, max_new_tokens=20)]
            assert [e.seq for e in events] == list(range(len(events)))
            ids = [t for e in events if e.type == "commit" for t in e.token_ids]
            assert ids == reference_ids(PROMPT, 20) and events[-1].type == "end"

            # What the ACL forbids a client: reading requests or control messages, injecting events.
            async with connect(client_plain) as snoop, connect(client_plain) as other:
                sid = new_stream_id()
                for topic in (REQUEST_TOPIC, "$share/specdec/" + REQUEST_TOPIC, control_topic(sid), events_topic(sid)):
                    await snoop.subscribe(topic)  # denied ones are refused in the SUBACK, silently for us
                fake = {"v": 1, "stream_id": sid, "seq": 0, "type": "error", "ts": time.time(), "code": "internal",
                        "message": "spoofed", "retryable": False}
                await other.publish(events_topic(sid), encode_json(fake))  # dropped: clients may not write events
                request = {"stream_id": sid, "prompt": PROMPT, "max_new_tokens": 5}
                await other.publish(REQUEST_TOPIC, encode_json(request))
                await other.publish(control_topic(sid), encode_json({"type": "resume", "after_seq": -1}))
                got = []
                async for message in snoop.messages():
                    got.append(message)
                    if message.topic == events_topic(sid) and decode_event(message.payload).type == "end":
                        break
            assert {m.topic for m in got} == {events_topic(sid)}, [m.topic for m in got]
            events = [decode_event(m.payload) for m in got]
            assert all(e.seq >= 0 for e in events) and "spoofed" not in [getattr(e, "message", "") for e in events]
            assert [t for e in events if e.type == "commit" for t in e.token_ids] == reference_ids(PROMPT, 5)
        return True

    assert run(body, 60)


def test_stock_client_without_credentials_is_refused(secured_broker):
    sub = need_binary("mosquitto_sub")
    base = [sub, "-h", "127.0.0.1", "-p", str(secured_broker.port), "-V", "mqttv5", "-t", "specdec/v1/streams/+/events"]
    refused = subprocess.run([*base, "-W", "2"], capture_output=True, text=True, timeout=20)
    assert refused.returncode != 0 and "not authorised" in (refused.stderr + refused.stdout).lower().replace("z", "s")
    allowed = subprocess.run(
        [*base, "-u", "client1", "-P", USERS["client1"], "-W", "1"], capture_output=True, text=True, timeout=20
    )
    assert "not authori" not in (allowed.stderr + allowed.stdout).lower()  # ran until its 1 s timeout


# --------------------------------------------------------------------------- serve --start-broker


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_serve_starts_no_broker_unless_asked():
    need_binary("mosquitto")
    port = free_port()

    async def body():
        with pytest.raises(asyncio.TimeoutError):  # keeps retrying the absent broker
            await asyncio.wait_for(serve(f"mqtt://127.0.0.1:{port}", tiny_generator(), tiny_tokenizer()), 1.5)
        assert not _listening(port)
        with pytest.raises(ValueError, match="loopback"):  # --start-broker runs a local mosquitto only
            await serve("mqtt://192.0.2.1:1883", tiny_generator(), tiny_tokenizer(), start_broker=True)
        return True

    assert run(body)


def test_cli_serve_start_broker(tmp_path):
    """``specdec serve --start-broker`` runs its own mosquitto, serves a request, and stops it on Ctrl-C (exit 0)."""
    need_binary("mosquitto")
    folder = tmp_path / "tiny"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    port = free_port()
    command = [
        sys.executable, "-m", "specdec.cli", "serve", "--start-broker", "--broker", f"mqtt://127.0.0.1:{port}",
        "--target", str(folder), "--dtype", "float32", "--device", "cpu", "--max-new-tokens-cap", "64",
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    async def body():
        deadline = time.monotonic() + 60
        while True:  # the child starts mosquitto, then its worker announces itself (retained status)
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "serve --start-broker never came up"
            if _listening(port):
                async with connect(BrokerConfig.from_url(f"mqtt://127.0.0.1:{port}")) as watch:
                    await watch.subscribe("specdec/v1/workers/+/status")
                    async for message in watch.messages():
                        if json.loads(message.payload).get("state") == "online":
                            break
                break
            await asyncio.sleep(0.2)
        async with StreamClient(f"mqtt://127.0.0.1:{port}") as client:
            return [e async for e in client.generate(PROMPT, max_new_tokens=16)]

    try:
        events = run(body, 90)
        assert [t for e in events if e.type == "commit" for t in e.token_ids] == reference_ids(PROMPT, 16)
        assert events[0].model == str(folder)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0  # a clean stop (SIGINT or SIGTERM), not an interruption
        assert not _listening(port)  # its mosquitto went with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
