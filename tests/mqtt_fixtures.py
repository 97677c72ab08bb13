"""Fixtures for the MQTT tests: a private mosquitto per test, a tiny model and an offline tokenizer.

Import what a test module needs: ``from mqtt_fixtures import broker, tiny_lm, run  # noqa: F401``.
Every broker listens on its own free loopback port with its own config file
(allow_anonymous, persistence off); tests skip with a clear message when the
mosquitto binary is missing.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))

from specdec.bench.models import byte_level_bpe, random_llama  # noqa: E402
from specdec.streaming.mqtt.broker import LocalMosquitto, find_mosquitto, free_port  # noqa: E402
from specdec.streaming.mqtt.transport import BrokerConfig  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mosquitto"
USERS = {"worker1": "worker-secret", "client1": "client-secret"}

T = TypeVar("T")

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "héllo wörld, café naïve über straße 🙂",
    "a stream of tokens flows through the broker to every subscriber",
    "speculative decoding drafts ahead and the target verifies",
] * 8


@functools.cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained offline on a small corpus (multi-byte characters split across tokens)."""
    return byte_level_bpe(CORPUS, vocab_size=320)


@functools.cache
def tiny_model(seed: int = 0, copy: int = 0) -> LlamaForCausalLM:
    """2 layers, hidden 32, the tokenizer's vocabulary; no EOS, so generations run to max_new_tokens.

    ``copy`` gives another object with the same weights (one per worker: a generator owns its model's cache).
    """
    return random_llama(vocab_size=len(tiny_tokenizer()), num_kv_heads=2, max_positions=1024, special_tokens=False,
                        seed=seed)


def tiny_generator(seed: int = 0, *, delay_s: float = 0.0, copy: int = 0) -> Any:
    """A SpeculativeGenerator over the tiny model with the n-gram drafter (``delay_s`` slows each proposal)."""
    from specdec import SpeculativeGenerator
    from specdec.drafts import NGramDrafter

    drafter = NGramDrafter(num_draft_tokens=4)
    if delay_s:
        drafter = _SlowDrafter(drafter, delay_s)
    return SpeculativeGenerator(tiny_model(seed, copy), drafter)


class _SlowDrafter:
    """Wraps a drafter and sleeps in ``propose``: makes a stream last long enough to interfere with."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s
        self.default_num_draft_tokens = inner.default_num_draft_tokens
        self.vocab_size = getattr(inner, "vocab_size", None)

    def begin(self, context: Any) -> None:
        self.inner.begin(context)

    def propose(self, k: int) -> Any:
        import time

        time.sleep(self.delay_s)
        return self.inner.propose(k)

    def update(self, token_ids: Any, num_accepted: int) -> None:
        self.inner.update(token_ids, num_accepted)

    def end(self) -> None:
        self.inner.end()


def reference_ids(prompt: str, max_new_tokens: int, seed: int = 0) -> list[int]:
    """The target's own greedy completion of ``prompt`` (token ids after the prompt)."""
    tok = tiny_tokenizer()
    ids = tok(prompt)["input_ids"]
    with torch.inference_mode():
        out = tiny_model(seed).generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    return out[0, len(ids) :].tolist()


@pytest.fixture
def broker():
    """A fresh mosquitto on a free 127.0.0.1 port (its own config file), stopped after the test."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto); MQTT tests need it")
    with LocalMosquitto() as instance:
        yield instance


def run(coro_fn: Callable[[], Awaitable[T]], timeout_s: float = 30.0) -> T:
    """Run an async test body with a hard timeout (no pytest-asyncio here)."""

    async def main() -> T:
        return await asyncio.wait_for(coro_fn(), timeout_s)

    return asyncio.run(main())


# --------------------------------------------------------------------------- the shipped secure config


def need_binary(binary: str) -> str:
    found = find_mosquitto() if binary == "mosquitto" else shutil.which(binary)
    if found is None:
        pytest.skip(f"{binary} is not installed (Debian/Ubuntu: mosquitto, mosquitto-clients, openssl)")
    return found


def _make_tls(folder: Path) -> None:
    """A throwaway CA and a server certificate for 127.0.0.1 (EC keys: quick to make)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl = need_binary("openssl")

    def sh(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True)

    sh("req", "-x509", *ec, "-days", "2", "-subj", "/CN=specdec-test-ca", "-keyout", "ca.key", "-out", "ca.crt")
    sh("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    sh(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.crt",
    )
    (folder / "server.key").chmod(0o644)  # mosquitto may drop privileges before reading it


def _secured(folder: Path):
    """examples/mosquitto as shipped, with its paths moved to ``folder`` and its listeners to free loopback ports."""
    need_binary("mosquitto")
    passwd = need_binary("mosquitto_passwd")
    for i, (user, password) in enumerate(USERS.items()):
        flags = ["-c", "-b"] if i == 0 else ["-b"]
        subprocess.run([passwd, *flags, str(folder / "passwd"), user, password], check=True, capture_output=True)
    shutil.copy(EXAMPLE / "acl", folder / "acl")
    _make_tls(folder)
    plain, tls = free_port(), free_port()
    text = (EXAMPLE / "mosquitto.conf").read_text()
    assert "listener 1883 127.0.0.1" in text and "\nlistener 8883\n" in text  # the shapes this fixture rewrites
    text = text.replace("/etc/mosquitto/specdec", str(folder))
    text = text.replace("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1")
    text = text.replace("\nlistener 8883\n", f"\nlistener {tls} 127.0.0.1\n")  # loopback only in tests
    text += f"\nlog_dest file {folder / 'mosquitto.log'}\n"
    if os.geteuid() == 0:  # as root, mosquitto would switch to its own user, which cannot read the folder
        text += "user root\n"
    broker = LocalMosquitto(port=plain, config_text=text)
    broker.tls_port = tls  # type: ignore[attr-defined]
    broker.folder = folder  # type: ignore[attr-defined]
    return broker


@pytest.fixture
def secured_broker(tmp_path):
    """A broker running examples/mosquitto as shipped (passwords, ACL, TLS), for one test."""
    with _secured(tmp_path) as broker:
        yield broker


@pytest.fixture(scope="module")
def shared_secured_broker(tmp_path_factory):
    """The same, shared by a module's tests (each uses fresh stream ids; one restarts it, same port)."""
    with _secured(tmp_path_factory.mktemp("secured-broker")) as broker:
        yield broker


def secure_config(broker, user: str | None, *, password: str | None = None, tls: bool = False) -> BrokerConfig:
    if tls:
        url = f"mqtts://127.0.0.1:{broker.tls_port}"
        return BrokerConfig.from_url(url, username=user, password=password, tls_ca=str(broker.folder / "ca.crt"))
    return BrokerConfig.from_url(broker.url, username=user, password=password)
