"""Concurrent requests through the MQTT worker share the engine's forward passes (a real mosquitto).

The oracle: each stream's tokens and text equal the target's own greedy generation of that prompt
alone, and the engine ran fewer forward passes than the requests took one after another, with at
least one pass carrying rows of several requests. A worker whose generator takes one row at a time
(``max_batch_rows=1``) still serves them all, one row per pass.
"""

from __future__ import annotations

import asyncio

import pytest

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.streaming.mqtt import RequestLimits, StreamClient, Worker, WorkerSettings
from specdec.streaming.mqtt.broker import LocalMosquitto, find_mosquitto

from mqtt_fixtures import reference_ids, run, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.mqtt

PROMPTS = [
    "the quick brown fox",
    "a stream of tokens flows",
    "speculative decoding drafts ahead",
    "héllo wörld, café",
]
NEW = 48
SETTINGS = WorkerSettings(model_name="tiny-llama", draft_name="ngram", limits=RequestLimits(max_new_tokens_cap=200))


@pytest.fixture(scope="module")
def shared_broker():
    """One mosquitto for the module (each test uses fresh stream ids, so nothing leaks between tests)."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto); MQTT tests need it")
    with LocalMosquitto() as instance:
        yield instance


def _generator(max_batch_rows: int, copy: int) -> SpeculativeGenerator:
    return SpeculativeGenerator(tiny_model(0, copy), NGramDrafter(num_draft_tokens=4), max_batch_rows=max_batch_rows)


def _serve_concurrently(url: str, gen: SpeculativeGenerator) -> list[list]:
    async def body():
        async with Worker(url, gen, tiny_tokenizer(), settings=SETTINGS), StreamClient(url) as client:

            async def one(prompt: str):
                return [e async for e in client.generate(prompt, max_new_tokens=NEW)]

            return await asyncio.gather(*(one(p) for p in PROMPTS))

    return run(body, 60)


def _check(results: list[list]) -> None:
    tok = tiny_tokenizer()
    for prompt, every in zip(PROMPTS, results, strict=True):
        events = [e for e in every if e.type != "queued"]  # out-of-band position notices (seq -1) while queued
        assert [e.seq for e in events] == list(range(len(events)))
        assert events[0].type == "start" and events[-1].type == "end"
        assert events[-1].finish_reason == "length"
        ids = [t for e in events if e.type == "commit" for t in e.token_ids]
        assert ids == reference_ids(prompt, NEW), prompt  # exactly the target's solo greedy output
        text = "".join(e.text for e in events if e.type == "commit")
        assert text == tok.decode(ids, skip_special_tokens=True) == events[-1].text


def test_concurrent_mqtt_requests_share_forward_passes_and_match_solo_runs(shared_broker):
    gen = _generator(16, copy=11)
    tok = tiny_tokenizer()
    solo = 0
    for prompt in PROMPTS:  # the passes each request takes alone (the same generator, so the same k choices)
        before = gen.engine.forwards
        out = gen.generate(tok(prompt, return_tensors="pt").input_ids, max_new_tokens=NEW, eos_token_id=[])
        assert out.sequences[0, out.stats.prompt_tokens :].tolist() == reference_ids(prompt, NEW)
        solo += gen.engine.forwards - before
    before, widths_before = gen.engine.forwards, gen.engine.rows_per_forward.copy()
    results = _serve_concurrently(shared_broker.url, gen)
    served = gen.engine.forwards - before
    widths = gen.engine.rows_per_forward - widths_before  # rows in a pass -> passes, during the served run
    _check(results)
    assert served < solo, (served, solo)  # the requests shared passes instead of queueing
    assert max(widths) > 1, widths  # some pass carried rows of several requests
    assert sum(widths.values()) == served


def test_a_one_row_worker_serves_them_one_row_per_pass(shared_broker):
    gen = _generator(1, copy=12)
    before = gen.engine.forwards
    results = _serve_concurrently(shared_broker.url, gen)
    _check(results)
    assert gen.engine.forwards > before
    assert set(gen.engine.rows_per_forward) == {1}  # max_batch_rows=1: requests wait for the row, never share
