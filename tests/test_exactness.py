"""Greedy speculative decoding is token-identical to the target's own ``generate``.

Every case compares against ``target.generate(input_ids, do_sample=False,
max_new_tokens=N)`` on a tiny random model built from a config, with drafters
that are always right (the target drafting for itself), almost always wrong
(an unrelated random model), and in between (n-gram lookup, an oracle at 0.5).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    MaxLengthCriteria,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
)

from specdec import InvalidArgumentError, SpeculativeGenerator
from specdec.drafts import ModelDrafter, NGramDrafter, OracleDrafter

from conftest import ARCHS, EOS

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT_LEN = 7
NEW_TOKENS = 36
DRAFTERS = ("self", "random", "ngram", "oracle")


def make_drafter(kind, target, reference, tiny_lm, arch):
    if kind == "self":
        return ModelDrafter(target)
    if kind == "random":
        # An unrelated model of another architecture that shares the vocabulary.
        return ModelDrafter(tiny_lm("gpt2" if arch == "llama" else "llama", seed=7))
    if kind == "ngram":
        return NGramDrafter()
    if kind == "oracle":
        return OracleDrafter(reference[0], acceptance=0.5, seed=3)
    raise AssertionError(kind)


class Recorder:
    """An ``on_tokens`` sink that keeps every block with its step number."""

    def __init__(self):
        self.blocks: list[tuple[int, list[int]]] = []

    def __call__(self, step, token_ids):
        self.blocks.append((step, list(token_ids)))

    @property
    def tokens(self) -> list[int]:
        return [t for _, block in self.blocks for t in block]


def check_output(out, reference, prompt_len, max_new_tokens, recorder=None):
    """The shared oracle: sequences equal the reference; stats and sink agree with them."""
    assert out.sequences.dtype == torch.long
    assert out.sequences.shape[0] == 1
    assert out.sequences.tolist() == reference.tolist(), "speculative output differs from target.generate"
    new = out.sequences[0, prompt_len:].tolist()
    assert len(new) <= max_new_tokens
    stats = out.stats
    assert stats.prompt_tokens == prompt_len
    assert stats.new_tokens == len(new)
    assert stats.target_forwards == stats.steps + (1 if prompt_len > 1 else 0)
    assert 0 <= stats.accepted <= stats.drafted
    assert stats.drafted == sum(stats.drafted_per_position)
    assert stats.accepted == sum(stats.accepted_per_position)
    assert stats.new_tokens <= stats.accepted + stats.steps
    if out.finish_reason == "length":
        assert len(new) == max_new_tokens
        assert stats.new_tokens == stats.accepted + stats.steps
    elif out.finish_reason == "eos":
        assert new[-1] == EOS and EOS not in new[:-1]
    if recorder is not None:
        assert recorder.tokens == new, "the on_tokens blocks do not add up to the returned tokens"
        assert [step for step, _ in recorder.blocks] == list(range(len(recorder.blocks)))
        assert all(block for _, block in recorder.blocks)
        assert len(recorder.blocks) == stats.steps


CASES = [("llama", kind, k) for kind in DRAFTERS for k in (1, 3, 5)]
CASES += [
    (arch, kind, k)
    for arch in ARCHS
    if arch != "llama"
    for kind, k in (("self", 5), ("random", 3), ("ngram", 3), ("oracle", 1), ("oracle", 5))
]


@pytest.mark.parametrize("arch,kind,k", CASES)
def test_greedy_matches_generate(arch, kind, k, tiny_lm, prompt, greedy_reference):
    target = tiny_lm(arch)
    input_ids = prompt(PROMPT_LEN)
    reference = greedy_reference(target, input_ids, NEW_TOKENS)
    assert reference.shape[1] == PROMPT_LEN + NEW_TOKENS, "pick a prompt the reference does not end early on"
    drafter = make_drafter(kind, target, reference, tiny_lm, arch)
    recorder = Recorder()
    out = SpeculativeGenerator(target, drafter).generate(
        input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=k, on_tokens=recorder
    )
    check_output(out, reference, PROMPT_LEN, NEW_TOKENS, recorder)
    stats = out.stats
    if kind == "self":
        assert stats.acceptance_rate == 1.0
        if out.finish_reason == "length":
            assert stats.steps == math.ceil(NEW_TOKENS / (k + 1))
    elif kind == "random":
        assert stats.acceptance_rate < 0.3
        assert stats.steps > NEW_TOKENS / 2  # mostly one token per step


def test_sliding_window_changes_the_output(tiny_lm, prompt, greedy_reference):
    """The mistral_sw cases above only mean something if the window matters."""
    input_ids = prompt(PROMPT_LEN)
    windowed = greedy_reference(tiny_lm("mistral_sw"), input_ids, NEW_TOKENS)
    full = greedy_reference(tiny_lm("mistral"), input_ids, NEW_TOKENS)
    assert windowed.tolist() != full.tolist()


@pytest.mark.parametrize("kind", DRAFTERS)
def test_float64(kind, tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama", seed=11, dtype=torch.float64)
    input_ids = prompt(PROMPT_LEN, seed=4)
    reference = greedy_reference(target, input_ids, NEW_TOKENS)
    if kind == "random":
        drafter = ModelDrafter(tiny_lm("qwen2", seed=8, dtype=torch.float64))
    else:
        drafter = make_drafter(kind, target, reference, tiny_lm, "llama")
    out = SpeculativeGenerator(target, drafter).generate(input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=4)
    check_output(out, reference, PROMPT_LEN, NEW_TOKENS)


@pytest.mark.parametrize("kind", DRAFTERS)
def test_one_token_prompt(kind, tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(1, seed=5)
    reference = greedy_reference(target, input_ids, 20)
    recorder = Recorder()
    drafter = make_drafter(kind, target, reference, tiny_lm, "llama")
    out = SpeculativeGenerator(target, drafter).generate(
        input_ids, max_new_tokens=20, num_draft_tokens=3, on_tokens=recorder
    )
    check_output(out, reference, 1, 20, recorder)


@pytest.mark.parametrize("kind", DRAFTERS)
@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 5, 7])
def test_draft_longer_than_remaining_budget(kind, max_new_tokens, tiny_lm, prompt, greedy_reference):
    """k larger than the tokens left: never more than ``max_new_tokens``, still exact."""
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)
    reference = greedy_reference(target, input_ids, max_new_tokens)
    drafter = make_drafter(kind, target, greedy_reference(target, input_ids, NEW_TOKENS), tiny_lm, "llama")
    recorder = Recorder()
    proposals: list[int] = []
    propose = drafter.propose
    drafter.propose = lambda n: (proposals.append(n), propose(n))[1]
    out = SpeculativeGenerator(target, drafter).generate(
        input_ids, max_new_tokens=max_new_tokens, num_draft_tokens=10, on_tokens=recorder
    )
    check_output(out, reference, PROMPT_LEN, max_new_tokens, recorder)
    assert out.sequences.shape[1] - PROMPT_LEN == max_new_tokens
    if max_new_tokens == 1:
        assert proposals == []  # no room for a draft: the target's own token only
    else:
        assert proposals and max(proposals) <= max_new_tokens - 1  # room for the target's own token


def _eos_mid_reference(reference: torch.Tensor, prompt_len: int, k: int) -> tuple[int, int]:
    """A token first generated mid-way at an offset that is not the end of a (k + 1)-block."""
    new = reference[0, prompt_len:].tolist()
    for position in range(8, len(new)):
        token = new[position]
        if token not in new[:position] and position % (k + 1) not in (0, k):
            return token, position
    raise AssertionError("no suitable EOS candidate in the reference")


@pytest.mark.parametrize("kind", ["self", "oracle", "ngram"])
def test_eos_inside_an_accepted_block(kind, tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)
    k = 5
    full = greedy_reference(target, input_ids, NEW_TOKENS)
    eos, position = _eos_mid_reference(full, PROMPT_LEN, k)
    reference = greedy_reference(target, input_ids, NEW_TOKENS, eos_token_id=eos)
    assert reference.shape[1] == PROMPT_LEN + position + 1  # HF stops at that EOS
    oracle_reference = full
    drafter = make_drafter(kind, target, oracle_reference, tiny_lm, "llama")
    recorder = Recorder()
    drafts: list[list[int]] = []
    out = SpeculativeGenerator(target, drafter).generate(
        input_ids,
        max_new_tokens=NEW_TOKENS,
        num_draft_tokens=k,
        eos_token_id=eos,
        on_tokens=recorder,
        on_draft=lambda step, ids: drafts.append(list(ids)),
    )
    assert out.sequences.tolist() == reference.tolist()
    assert out.finish_reason == "eos"
    assert recorder.tokens == out.sequences[0, PROMPT_LEN:].tolist()
    assert recorder.tokens[-1] == eos and eos not in recorder.tokens[:-1]
    assert out.stats.new_tokens == position + 1
    if kind == "self":
        # The EOS sat inside the last accepted block: tokens after it were drafted,
        # accepted by the target, and still never reached the sink.
        last_draft = drafts[-1]
        assert eos in last_draft and last_draft.index(eos) < len(last_draft) - 1
        assert len(recorder.blocks[-1][1]) < k + 1


def test_eos_list_and_model_default(tiny_lm, prompt, greedy_reference):
    """``eos_token_id=None`` means the target's generation_config; a list works like HF."""
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)
    full = greedy_reference(target, input_ids, NEW_TOKENS)
    eos_a, _ = _eos_mid_reference(full, PROMPT_LEN, 3)
    eos_b = full[0, PROMPT_LEN + 20].item()
    reference = greedy_reference(target, input_ids, NEW_TOKENS, eos_token_id=[eos_b, eos_a])
    gen = SpeculativeGenerator(target, ModelDrafter(target))
    out = gen.generate(input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=3, eos_token_id=[eos_b, eos_a])
    assert out.sequences.tolist() == reference.tolist()
    saved = target.generation_config.eos_token_id
    try:
        target.generation_config.eos_token_id = eos_a
        reference = greedy_reference(target, input_ids, NEW_TOKENS, eos_token_id=eos_a)
        out = gen.generate(input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=3)
        assert out.sequences.tolist() == reference.tolist()
        assert out.finish_reason == "eos"
    finally:
        target.generation_config.eos_token_id = saved


def test_max_new_tokens_never_exceeded(tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)
    gen = SpeculativeGenerator(target, ModelDrafter(target))
    for max_new_tokens in range(1, 14):
        recorder = Recorder()
        out = gen.generate(input_ids, max_new_tokens=max_new_tokens, num_draft_tokens=5, on_tokens=recorder)
        assert out.sequences.shape[1] == PROMPT_LEN + max_new_tokens
        assert len(recorder.tokens) == max_new_tokens
        assert out.sequences.tolist() == greedy_reference(target, input_ids, max_new_tokens).tolist()


def test_prompt_near_context_limit_stops_at_the_context(tiny_lm, prompt):
    target = tiny_lm("llama", max_position_embeddings=20)
    input_ids = prompt(16)
    out = SpeculativeGenerator(target, NGramDrafter()).generate(input_ids, max_new_tokens=30, num_draft_tokens=3)
    assert out.sequences.shape[1] <= 20


class _CountForwards:
    def __init__(self, model):
        self.count = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.count += 1


@pytest.mark.parametrize("kind", ["copy", "ngram"])
def test_each_block_reaches_the_sink_before_the_next_step(kind, tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)
    reference = greedy_reference(target, input_ids, NEW_TOKENS)
    if kind == "copy":  # a separate module, so the hook below counts target forwards only
        drafter = ModelDrafter(copy.deepcopy(target))
    else:
        drafter = make_drafter(kind, target, reference, tiny_lm, "llama")
    events: list[tuple] = []
    propose, update = drafter.propose, drafter.update
    drafter.propose = lambda n: (events.append(("propose",)), propose(n))[1]
    drafter.update = lambda ids, n: (events.append(("update", list(ids))), update(ids, n))[1]
    gen = SpeculativeGenerator(target, drafter)  # its construction probe runs forwards too: count after it
    counter = _CountForwards(target)
    seen_forwards = []

    def sink(step, token_ids):
        events.append(("sink", step, list(token_ids)))
        seen_forwards.append(counter.count)

    try:
        out = gen.generate(input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=3, on_tokens=sink)
    finally:
        counter.handle.remove()
    assert out.sequences.tolist() == reference.tolist()
    # Target forwards seen at sink(step): the prefill plus one verify pass per step so far.
    assert seen_forwards == [2 + step for step in range(len(seen_forwards))]
    # After sink(step) comes the next propose, never before it.
    sinks = updates = 0
    for event in events:
        if event[0] == "sink":
            assert event[1] == sinks
            sinks += 1
        elif event[0] == "update":
            updates += 1
        else:
            assert updates == sinks
    # The drafter learns exactly the blocks the sink saw.
    assert [e[1] for e in events if e[0] == "update"] == [e[2] for e in events if e[0] == "sink"]


class _StopOnToken(StoppingCriteria):
    def __init__(self, token_id):
        self.token_id = token_id

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token_id


@pytest.mark.parametrize("kind", ["self", "random", "ngram"])
def test_logits_processors_match_generate(kind, tiny_lm, prompt):
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)

    def processors():
        return LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.8), NoRepeatNGramLogitsProcessor(2)])

    reference = target.generate(
        input_ids, do_sample=False, max_new_tokens=NEW_TOKENS, logits_processor=processors()
    )
    plain = target.generate(input_ids, do_sample=False, max_new_tokens=NEW_TOKENS)
    assert reference.tolist() != plain.tolist(), "the processors should change the output"
    drafter = make_drafter(kind, target, reference, tiny_lm, "llama")
    recorder = Recorder()
    out = SpeculativeGenerator(target, drafter).generate(
        input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=4, logits_processor=processors(), on_tokens=recorder
    )
    check_output(out, reference, PROMPT_LEN, NEW_TOKENS, recorder)
    if kind == "self":
        assert out.stats.acceptance_rate == 1.0  # the drafter shapes its logits like the target


@pytest.mark.parametrize("criterion", ["max_length", "token"])
def test_stopping_criteria_match_generate(criterion, tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)
    full = greedy_reference(target, input_ids, NEW_TOKENS)
    if criterion == "max_length":

        def criteria():
            return StoppingCriteriaList([MaxLengthCriteria(max_length=PROMPT_LEN + 13)])

    else:
        stop_token, _ = _eos_mid_reference(full, PROMPT_LEN, 5)

        def criteria():
            return StoppingCriteriaList([_StopOnToken(stop_token)])

    reference = target.generate(input_ids, do_sample=False, max_new_tokens=NEW_TOKENS, stopping_criteria=criteria())
    assert reference.shape[1] < full.shape[1]
    recorder = Recorder()
    out = SpeculativeGenerator(target, ModelDrafter(target)).generate(
        input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=5, stopping_criteria=criteria(), on_tokens=recorder
    )
    assert out.sequences.tolist() == reference.tolist()
    assert out.finish_reason == "stop"
    assert recorder.tokens == out.sequences[0, PROMPT_LEN:].tolist()


def test_generation_config(tiny_lm, prompt):
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)
    config = GenerationConfig(max_new_tokens=17, do_sample=False, eos_token_id=EOS)
    reference = target.generate(input_ids, generation_config=config)
    out = SpeculativeGenerator(target, NGramDrafter()).generate(input_ids, generation_config=config)
    assert out.sequences.tolist() == reference.tolist()
    assert out.sequences.shape[1] == PROMPT_LEN + 17
    # Explicit arguments win over the config.
    out = SpeculativeGenerator(target, NGramDrafter()).generate(input_ids, generation_config=config, max_new_tokens=5)
    assert out.sequences.shape[1] == PROMPT_LEN + 5


def test_attention_mask_with_left_padding(tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)
    reference = greedy_reference(target, input_ids, 12)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), input_ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(input_ids)], dim=1)
    out = SpeculativeGenerator(target, NGramDrafter()).generate(padded, attention_mask=mask, max_new_tokens=12)
    assert out.sequences.tolist() == reference.tolist()


def test_generator_is_reusable_across_calls_and_drafters(tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    gen = SpeculativeGenerator(target, ModelDrafter(tiny_lm("gpt2", seed=7)))
    for seed, length, new in [(1, 7, 20), (2, 3, 15), (1, 7, 20), (3, 11, 25)]:
        input_ids = prompt(length, seed=seed)
        out = gen.generate(input_ids, max_new_tokens=new, num_draft_tokens=3)
        assert out.sequences.tolist() == greedy_reference(target, input_ids, new).tolist()


@pytest.mark.parametrize("kind", ["self", "random", "ngram"])
def test_generator_usable_after_a_failure_mid_generation(kind, tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)
    reference = greedy_reference(target, input_ids, NEW_TOKENS)
    gen = SpeculativeGenerator(target, make_drafter(kind, target, reference, tiny_lm, "llama"))

    def failing_sink(step, token_ids):
        if step == 2:
            raise RuntimeError("subscriber went away")

    with pytest.raises(RuntimeError, match="subscriber went away"):
        gen.generate(input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=3, on_tokens=failing_sink)
    out = gen.generate(input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=3)
    assert out.sequences.tolist() == reference.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_draft_and_target_on_different_devices(tiny_lm, prompt, greedy_reference):
    cpu_target = tiny_lm("llama")
    target = copy.deepcopy(cpu_target).to("cuda")
    draft = tiny_lm("gpt2", seed=7)  # stays on the CPU
    input_ids = prompt(PROMPT_LEN)
    reference = target.generate(input_ids.cuda(), do_sample=False, max_new_tokens=NEW_TOKENS).cpu()
    for drafter in (ModelDrafter(draft), ModelDrafter(copy.deepcopy(cpu_target)), NGramDrafter()):
        out = SpeculativeGenerator(target, drafter).generate(input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=3)
        assert out.sequences.cpu().tolist() == reference.tolist()


# Sliding-window layers declared in config.layer_types: the adapter's full DynamicCache
# keeps every entry, so rollback stays exact (checked against HF's own sliding caches).
SLIDING = {
    "gemma2": dict(sliding_window=4),
    "qwen2": dict(use_sliding_window=True, sliding_window=4, layer_types=["sliding_attention", "sliding_attention"]),
}


@pytest.mark.parametrize("arch", sorted(SLIDING))
@pytest.mark.parametrize("kind,k", [("self", 4), ("ngram", 4), ("random", 1)])
def test_sliding_layer_types_match_generate(arch, kind, k, tiny_lm, prompt, greedy_reference):
    target = tiny_lm(arch, **SLIDING[arch])
    input_ids = prompt(PROMPT_LEN)
    reference = greedy_reference(target, input_ids, NEW_TOKENS)
    assert reference.shape[1] == PROMPT_LEN + NEW_TOKENS
    drafter = make_drafter(kind, target, reference, tiny_lm, arch)
    out = SpeculativeGenerator(target, drafter).generate(input_ids, max_new_tokens=NEW_TOKENS, num_draft_tokens=k)
    check_output(out, reference, PROMPT_LEN, NEW_TOKENS)


@pytest.mark.parametrize(
    "setting",
    [
        {"repetition_penalty": 1.8},
        {"no_repeat_ngram_size": 2},
        {"suppress_tokens": [1, 2, 3, 5, 8]},
        {"min_new_tokens": 20, "eos_token_id": 7},
        {"sequence_bias": {(4,): 3.0}},
    ],
    ids=lambda setting: "+".join(setting),
)
def test_processors_from_the_models_generation_config(setting, tiny_lm, prompt):
    """HF generate applies the processors named by the model's own generation_config; so do we."""
    target = copy.deepcopy(tiny_lm("llama"))
    for name, value in setting.items():
        setattr(target.generation_config, name, value)
    input_ids = prompt(PROMPT_LEN)
    reference = target.generate(input_ids, do_sample=False, max_new_tokens=NEW_TOKENS)
    for drafter in (NGramDrafter(), ModelDrafter(target)):
        out = SpeculativeGenerator(target, drafter).generate(input_ids, max_new_tokens=NEW_TOKENS)
        assert out.sequences.tolist() == reference.tolist()


def test_unreproducible_generation_config_settings_are_refused(tiny_lm, prompt):
    target = copy.deepcopy(tiny_lm("llama"))
    target.generation_config.forced_eos_token_id = 3
    gen = SpeculativeGenerator(target, NGramDrafter())
    with pytest.raises(InvalidArgumentError, match="forced_eos_token_id"):
        gen.generate(prompt(PROMPT_LEN), max_new_tokens=8)
    target.generation_config.forced_eos_token_id = None
    reference = target.generate(prompt(PROMPT_LEN), do_sample=False, max_new_tokens=8)
    assert gen.generate(prompt(PROMPT_LEN), max_new_tokens=8).sequences.tolist() == reference.tolist()
