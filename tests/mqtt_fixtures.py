"""Fixtures for the MQTT tests: a private mosquitto per test, a tiny model and an offline tokenizer.

Import what a test module needs: ``from mqtt_fixtures import broker, tiny_lm, run  # noqa: F401``.
Every broker listens on its own free loopback port with its own config file
(allow_anonymous, persistence off); tests skip with a clear message when the
mosquitto binary is missing.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).resolve().parent))

from specdec.bench.models import byte_level_bpe, random_llama  # noqa: E402
from specdec.streaming.mqtt.broker import LocalMosquitto, find_mosquitto  # noqa: E402

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
