"""EagleDrafter is exact: greedy equals the target's own ``generate``; sampling keeps the target's distribution.

Heads: random EAGLE-3 heads (reduced draft vocabulary) on several architectures, an EAGLE-1 head,
and a head trained by ``train`` on a tiny target (so drafts are accepted, not only rejected).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from eagle_helpers import random_eagle1_weights, random_eagle3_weights, write_checkpoint
from test_sampling import P_MIN, P_WRONG, chi_square_pvalue, exact_joint
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from specdec import LogitsShaper, SpeculativeGenerator
from specdec.drafts.eagle import EagleDrafter, EagleHead, load_head, save_speculators
from specdec.drafts.eagle.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = 30


def _random_head(tmp_path, target, fmt="speculators", seed=1, **kw):
    if fmt == "eagle1":
        weights, shape = random_eagle1_weights(seed=seed)
    else:
        weights, shape = random_eagle3_weights(hidden=32, seed=seed, **kw)
    return load_head(write_checkpoint(tmp_path / f"{fmt}{seed}", fmt, weights, shape), target)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_lm, prompt):
    """A head trained for a few seconds on a peaked tiny llama: it gets some drafts accepted."""
    target = tiny_lm("llama", logit_scale=8.0)
    prompts = [prompt(8, seed=100 + s)[0].tolist() for s in range(36)]
    config = TrainConfig(held_out=4, epochs=12, max_new_tokens=24, draft_vocab_size=96, learning_rate=1e-2,
                         unroll=2, checkpoint_every=1000)  # fmt: skip
    folder = tmp_path_factory.mktemp("trained")
    result = train(target, None, prompts, folder, config, progress=False)
    return target, load_head(folder, target), result


def _check_greedy(target, drafter, input_ids, greedy_reference, k=4, **kwargs):
    reference = greedy_reference(target, input_ids, NEW, **kwargs)
    out = SpeculativeGenerator(target, drafter).generate(input_ids, max_new_tokens=NEW, num_draft_tokens=k, **kwargs)
    assert out.sequences.tolist() == reference.tolist()
    return out.stats


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma", "opt", "gpt_neox", "phi3", "mistral_sw"])
def test_greedy_random_head_equals_generate(arch, tmp_path, tiny_lm, prompt, greedy_reference):
    target = tiny_lm(arch)
    head = _random_head(tmp_path, target)
    stats = _check_greedy(target, EagleDrafter(head), prompt(7), greedy_reference)
    assert stats.drafted > 0


def test_greedy_eagle1_head_and_float64(tmp_path, tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama", dtype=torch.float64)
    head = _random_head(tmp_path, target, fmt="eagle1")
    assert head.lm_head.weight.dtype == torch.float64
    _check_greedy(target, EagleDrafter(head), prompt(7), greedy_reference)


def test_greedy_trained_head(trained, prompt, greedy_reference):
    target, head, result = trained
    accepted = 0
    for seed, length in ((30, 8), (31, 1), (32, 12)):  # length 1: no prefill, the first step drafts nothing
        for k in (1, 3, 5):
            stats = _check_greedy(target, EagleDrafter(head), prompt(length, seed=seed), greedy_reference, k=k)
            accepted += stats.accepted
    assert accepted > 0  # the check covered accepted drafts, not only rejections
    assert 0.0 <= result.acceptance["conditional_acceptance"] <= 1.0


def test_greedy_with_history_processors_and_eos(trained, prompt, greedy_reference):
    target, head, _ = trained
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3)])
    input_ids = prompt(6, seed=40)
    reference = greedy_reference(target, input_ids, NEW, repetition_penalty=1.3)
    out = SpeculativeGenerator(target, EagleDrafter(head)).generate(
        input_ids, max_new_tokens=NEW, logits_processor=processors
    )
    assert out.sequences.tolist() == reference.tolist()
    # stop at a token the target produces: EOS cuts a block mid-way
    plain = greedy_reference(target, input_ids, NEW)
    stop = int(plain[0, input_ids.shape[1] + 9])
    reference = greedy_reference(target, input_ids, NEW, eos_token_id=stop)
    out = SpeculativeGenerator(target, EagleDrafter(head)).generate(input_ids, max_new_tokens=NEW, eos_token_id=stop)
    assert out.sequences.tolist() == reference.tolist() and out.finish_reason == "eos"


# ----------------------------------------------------------------------------- sampling

SMALL_VOCAB, PROMPT, TOKENS = 16, torch.tensor([[5, 9, 5]]), 3


def _reduced_trained_head(target, folder, first_probs):
    """Train a full-vocabulary head, then keep 10 of its 16 output rows: the second-likeliest first token
    and the five least likely ones fall outside the draft vocabulary."""
    prompts = [[int(t) for t in torch.randint(3, SMALL_VOCAB, (3,), generator=torch.Generator().manual_seed(s))]
               for s in range(40)]  # fmt: skip
    config = TrainConfig(held_out=0, epochs=6, max_new_tokens=8, draft_vocab_size=SMALL_VOCAB, learning_rate=1e-2)
    train(target, None, prompts + [PROMPT[0].tolist()] * 4, folder / "full", config, progress=False)
    full = load_head(folder / "full", target)
    order = first_probs.argsort(descending=True).tolist()
    outside = sorted([order[1]] + order[-5:])
    keep = torch.tensor(sorted(set(range(SMALL_VOCAB)) - set(outside)))
    state = {k: v for k, v in full.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"][keep]
    state["d2t"] = keep - torch.arange(len(keep))
    reduced = EagleHead(replace(full.config, draft_vocab_size=len(keep)))
    reduced.load_state_dict(state)
    save_speculators(reduced, folder / "reduced", verifier="tiny", save_embeddings=True)
    return load_head(folder / "reduced", target), outside


def test_sampling_keeps_the_target_distribution_with_a_reduced_draft_vocabulary(tmp_path, tiny_lm):
    target = tiny_lm("llama", seed=3, vocab_size=SMALL_VOCAB, logit_scale=25.0, eos_token_id=None)
    expected = exact_joint(target, PROMPT, TOKENS, LogitsShaper(do_sample=True))
    expected_first = expected.reshape(SMALL_VOCAB, -1).sum(-1)
    head, outside = _reduced_trained_head(target, tmp_path, expected_first)
    assert head.config.draft_vocab_size == 10 and not set(outside) & set(head.target_ids.tolist())
    gen = SpeculativeGenerator(target, EagleDrafter(head))
    counts = torch.zeros(SMALL_VOCAB**TOKENS, dtype=torch.long)
    drafted = accepted = 0
    for seed in range(800):
        out = gen.generate(PROMPT, do_sample=True, max_new_tokens=TOKENS, num_draft_tokens=TOKENS - 1, seed=seed)
        a, b, c = out.sequences[0, 3:].tolist()
        counts[(a * SMALL_VOCAB + b) * SMALL_VOCAB + c] += 1
        drafted, accepted = drafted + out.stats.drafted, accepted + out.stats.accepted
    assert chi_square_pvalue(counts, expected) > P_MIN
    hotter = exact_joint(target, PROMPT, TOKENS, LogitsShaper(do_sample=True, temperature=1.5))
    assert chi_square_pvalue(counts, hotter) < P_WRONG  # negative control
    assert 0.1 < accepted / drafted < 0.95, accepted / drafted  # both outcomes exercised
    # a likely token outside the draft vocabulary is still produced, through the residual distribution
    first = counts.reshape(SMALL_VOCAB, -1).sum(-1)
    second_likeliest = int(expected_first.argsort(descending=True)[1])
    assert second_likeliest in outside and first[second_likeliest] > 0
