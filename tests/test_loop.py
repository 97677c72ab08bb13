"""The loop's collaborators: injected draft-length policies and the streamer sink (ends on failure too)."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

from specdec import (
    AdaptiveDraftLength,
    CostProfile,
    DrafterContractError,
    FixedDraftLength,
    InvalidArgumentError,
    SpecDecError,
    SpeculativeGenerator,
)
from specdec.drafts import NGramDrafter

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = 24


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.puts: list[list[int]] = []
        self.ends = 0

    def put(self, value):
        self.puts.append(torch.as_tensor(value).reshape(-1).tolist())

    def end(self):
        self.ends += 1


class CountingPolicy:
    """A policy object of our own: k alternates 1, 3; records what it observed."""

    adaptive = False
    k_max = 3

    def __init__(self):
        self.chosen: list[int] = []
        self.observed: list[tuple[int, int]] = []
        self.finished = 0

    def choose(self):
        self.chosen.append(1 if len(self.chosen) % 2 == 0 else 3)
        return self.chosen[-1]

    def observe(self, num_drafted, num_accepted, draft_s, verify_s, *, rejected=None):
        assert draft_s >= 0 and verify_s >= 0
        self.observed.append((num_drafted, num_accepted))

    def finish(self):
        self.finished += 1


def test_streamer_sees_prompt_then_every_block_and_one_end(tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(7)
    streamer = RecordingStreamer()
    out = SpeculativeGenerator(target, NGramDrafter()).generate(input_ids, max_new_tokens=NEW, streamer=streamer)
    assert out.sequences.tolist() == greedy_reference(target, input_ids, NEW).tolist()
    assert streamer.puts[0] == input_ids[0].tolist()
    assert [t for put in streamer.puts[1:] for t in put] == out.sequences[0, 7:].tolist()
    assert streamer.ends == 1


def test_streamer_end_runs_when_generation_fails(tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(7)
    gen = SpeculativeGenerator(target, NGramDrafter())
    streamer = RecordingStreamer()

    def failing_sink(step, token_ids):
        if step == 1:
            raise RuntimeError("sink failed on purpose")

    with pytest.raises(RuntimeError, match="on purpose"):
        gen.generate(input_ids, max_new_tokens=NEW, on_tokens=failing_sink, streamer=streamer)
    assert streamer.ends == 1
    assert len(streamer.puts) == 2  # the prompt and block 0; block 1 failed in the first sink
    out = gen.generate(input_ids, max_new_tokens=NEW)
    assert out.sequences.tolist() == greedy_reference(target, input_ids, NEW).tolist()


def test_not_a_streamer_is_refused(tiny_lm, prompt):
    with pytest.raises(InvalidArgumentError, match="BaseStreamer"):
        SpeculativeGenerator(tiny_lm("llama"), NGramDrafter()).generate(prompt(7), streamer=object())


def test_an_injected_policy_drives_k(tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(7)
    policy = CountingPolicy()
    out = SpeculativeGenerator(target, NGramDrafter()).generate(input_ids, max_new_tokens=NEW, num_draft_tokens=policy)
    assert out.sequences.tolist() == greedy_reference(target, input_ids, NEW).tolist()
    assert len(policy.observed) == out.stats.steps == len(policy.chosen)
    assert all(drafted <= chosen for (drafted, _), chosen in zip(policy.observed, policy.chosen, strict=False))
    assert sum(a for _, a in policy.observed) == out.stats.accepted
    assert policy.finished == 1


def test_fixed_and_adaptive_policy_objects_equal_their_shorthands(tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(7)
    gen = SpeculativeGenerator(target, NGramDrafter())
    by_int = gen.generate(input_ids, max_new_tokens=NEW, num_draft_tokens=3)
    by_object = gen.generate(input_ids, max_new_tokens=NEW, num_draft_tokens=FixedDraftLength(3))
    assert by_object.sequences.tolist() == by_int.sequences.tolist()
    assert by_object.stats.drafted_per_position == by_int.stats.drafted_per_position
    controller = AdaptiveDraftLength(CostProfile(), default_k=4)
    out = gen.generate(input_ids, max_new_tokens=NEW, num_draft_tokens=controller)
    assert out.sequences.tolist() == greedy_reference(target, input_ids, NEW).tolist()
    assert len(controller.chosen) == out.stats.steps


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "fast"])
def test_bad_fixed_lengths_are_refused(bad):
    with pytest.raises(InvalidArgumentError):
        FixedDraftLength(bad)


def test_drafter_contract_error_is_a_specdec_error():
    assert issubclass(DrafterContractError, SpecDecError)
