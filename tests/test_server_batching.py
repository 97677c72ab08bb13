"""Concurrent streams on one generator share the engine's forward passes, each exactly its solo output."""

from __future__ import annotations

import asyncio

import pytest
import torch

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.streaming import CommitEvent, EndEvent, StreamHub

from _streaming_fixtures import byte_level_tokenizer, run, tiny_llama

PROMPTS = [
    "the quick brown fox jumps over the lazy dog",
    "a b c d e f g a b c d e f g",
    "speculative decoding verifies drafts",
    "one two three four five six",
]
NEW = 40


@pytest.fixture(scope="module")
def setup():
    tok = byte_level_tokenizer()
    model = tiny_llama(vocab_size=len(tok), seed=3)
    return tok, model


def test_concurrent_hub_streams_share_forward_passes_and_match_solo_runs(setup):
    tok, model = setup
    gen = SpeculativeGenerator(model, NGramDrafter())
    prompts = [tok(p, return_tensors="pt").input_ids for p in PROMPTS]
    references, solo_forwards = [], 0
    for ids in prompts:
        before = gen.engine.forwards
        out = model.generate(ids, max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW)
        references.append(out[0, ids.shape[1] :].tolist())
        ours = gen.generate(ids, max_new_tokens=NEW, eos_token_id=[])
        assert ours.sequences[0, ids.shape[1] :].tolist() == references[-1]
        solo_forwards += gen.engine.forwards - before

    async def body():
        hub = StreamHub()
        before = gen.engine.forwards
        streams = [
            hub.start(gen, ids, tokenizer=tok, max_new_tokens=NEW, eos_token_id=[]) for ids in prompts
        ]

        async def collect(stream):
            tokens, end = [], None
            async for event in stream.subscribe():
                if isinstance(event, CommitEvent):
                    tokens += event.token_ids
                elif isinstance(event, EndEvent):
                    end = event
            return tokens, end

        results = await asyncio.gather(*(collect(s) for s in streams))
        await hub.close()
        return results, gen.engine.forwards - before

    results, shared_forwards = run(body(), timeout=120)
    for (tokens, end), reference in zip(results, references, strict=True):
        assert end is not None and end.finish_reason == "length"
        assert tokens == reference  # each stream is exactly its solo generation
    # One forward pass served several streams: fewer passes than running them one after another.
    assert shared_forwards < solo_forwards, (shared_forwards, solo_forwards)


def test_a_generator_without_concurrent_generate_is_still_serialized(setup):
    """Other generators (any object with ``generate``) keep one stream at a time."""
    tok, model = setup
    gen = SpeculativeGenerator(model, NGramDrafter())

    class Plain:
        def __init__(self) -> None:
            self.model, self.drafter = gen.model, gen.drafter
            self.active = 0
            self.most = 0

        def generate(self, input_ids, **kwargs):
            self.active += 1
            self.most = max(self.most, self.active)
            try:
                return gen.generate(input_ids, **kwargs)
            finally:
                self.active -= 1

    plain = Plain()

    async def body():
        hub = StreamHub()
        ids = tok(PROMPTS[0], return_tensors="pt").input_ids
        streams = [hub.start(plain, ids, tokenizer=tok, max_new_tokens=8) for _ in range(3)]
        outs = await asyncio.gather(*(s.result() for s in streams))
        await hub.close()
        return outs

    outs = run(body(), timeout=120)
    assert plain.most == 1
    assert all(torch.equal(o.sequences, outs[0].sequences) for o in outs)
