"""EagleDrafter's bookkeeping (features, positions, rollback), its draft probabilities,
and training/inference parity."""

from __future__ import annotations

import pytest
import torch
from eagle_helpers import random_eagle3_weights, write_checkpoint

from specdec import DraftContext, InvalidArgumentError, LogitsShaper
from specdec.drafts.eagle import EagleDrafter, HeadKV, load_head
from specdec.drafts.eagle.data import capture_layers
from specdec.drafts.eagle.train import TrainConfig, _sequence_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def setup(tmp_path, tiny_lm, prompt):
    target = tiny_lm("llama")
    weights, shape = random_eagle3_weights(hidden=32, seed=1)
    head = load_head(write_checkpoint(tmp_path / "h", "speculators", weights, shape), target)
    return target, head, prompt(6)[0]


def _fresh_logits(head, target, sequence):
    """Draft logits after ``sequence``, from the target's features, with a fresh cache."""
    feats = capture_layers(target, sequence, head.config.target_layers)[:-1]  # positions 0..T-2
    cache = HeadKV.empty(head.config, device="cpu", dtype=torch.float32)
    hidden, logits = head.step(head.project(feats), sequence[1:], torch.arange(len(sequence) - 1), cache)
    return hidden[-1:], logits[-1:], cache


def _greedy_chain(head, target, sequence, k):
    hidden, logits, cache = _fresh_logits(head, target, sequence)
    tokens, position = [], len(sequence) - 1
    for i in range(k):
        token = head.target_ids[logits.argmax(-1)]
        tokens.append(int(token))
        if i + 1 < k:
            hidden, logits = head.step(hidden, token, torch.tensor([position]), cache)
            position += 1
    return tokens


def _context(prompt_ids, **shaper):
    return DraftContext(prompt_ids=prompt_ids, shaper=LogitsShaper(**shaper), vocab_size=160, seed=0, max_new_tokens=32)


def test_chain_and_rollback_follow_the_target_features(setup):
    target, head, prompt_ids = setup
    drafter = EagleDrafter(head, num_draft_tokens=3)
    assert drafter.target_layers == (0, 1, 2) and drafter.vocab_size == 160
    drafter.begin(_context(prompt_ids))
    assert len(drafter.propose(3)) == 0  # no features yet: nothing to draft from
    features = capture_layers(target, prompt_ids, drafter.target_layers)
    drafter.observe_hidden_states(features[:-1])  # the prefill: positions 0..T-2
    block = drafter.propose(3)
    assert block.draft_probs is None
    assert block.token_ids.tolist() == _greedy_chain(head, target, prompt_ids, 3)
    # the target keeps the first draft and adds its own token
    first, own = int(block.token_ids[0]), (int(block.token_ids[1]) + 1) % 160
    sequence = torch.cat([prompt_ids, torch.tensor([first, own])])
    drafter.update([first, own], 1)
    kept = capture_layers(target, sequence, drafter.target_layers)[len(prompt_ids) - 1 : len(prompt_ids) + 1]
    drafter.observe_hidden_states(kept)
    assert drafter.propose(2).token_ids.tolist() == _greedy_chain(head, target, sequence, 2)
    drafter.end()


def test_sampled_drafts_stay_in_the_draft_vocabulary(setup):
    target, head, prompt_ids = setup
    drafter = EagleDrafter(head)
    drafter.begin(_context(prompt_ids, do_sample=True, temperature=0.7))
    drafter.observe_hidden_states(capture_layers(target, prompt_ids, drafter.target_layers)[:-1])
    block = drafter.propose(4)
    assert block.draft_probs.shape == (4, 160)
    inside = torch.zeros(160, dtype=torch.bool)
    inside[head.target_ids] = True
    torch.testing.assert_close(block.draft_probs.sum(-1), torch.ones(4))
    assert float(block.draft_probs[:, ~inside].abs().max()) == 0.0  # probability 0 outside the draft vocabulary
    assert bool(inside[block.token_ids].all())
    # the first row is the shaped head distribution, mapped to target ids
    _, logits, _ = _fresh_logits(head, target, prompt_ids)
    expected = torch.zeros(160)
    expected[head.target_ids] = torch.softmax(logits[0] / 0.7, -1)
    torch.testing.assert_close(block.draft_probs[0], expected, atol=1e-6, rtol=1e-5)


def test_bad_arguments(setup):
    _, head, prompt_ids = setup
    with pytest.raises(InvalidArgumentError):
        EagleDrafter(head, num_draft_tokens=0)
    with pytest.raises(InvalidArgumentError):
        EagleDrafter(object())
    drafter = EagleDrafter(head)
    drafter.begin(_context(prompt_ids))
    with pytest.raises(InvalidArgumentError, match=r"\[n, 3, 32\]"):
        drafter.observe_hidden_states(torch.zeros(2, 1, 32))


def test_training_unroll_matches_the_inference_chain(setup):
    """The unrolled training steps see what the drafter's chain sees: same logits for the same tokens."""
    target, head, prompt_ids = setup
    head = head.float()
    length = len(prompt_ids)
    feats = capture_layers(target, prompt_ids, head.config.target_layers + (2,))
    # capture the logits of each unrolled step from inside the training loss
    seen = []
    original = head.finish

    def spy(attended, residual):
        out = original(attended, residual)
        seen.append(out[1].detach())
        return out

    head.finish = spy
    try:
        probs = torch.full((length, head.config.draft_vocab_size), 1.0 / head.config.draft_vocab_size)
        _sequence_loss(head, prompt_ids, feats, probs, TrainConfig(unroll=3))
    finally:
        del head.finish
    step1, step2, step3 = seen
    for origin in range(length - 3):
        # inference: features of positions 0..origin, then the chain fed with the true next tokens
        cache = HeadKV.empty(head.config, device="cpu", dtype=torch.float32)
        hidden, logits = head.step(head.project(feats[: origin + 1, :3]), prompt_ids[1 : origin + 2],
                                   torch.arange(origin + 1), cache)  # fmt: skip
        torch.testing.assert_close(logits[-1], step1[origin], atol=1e-5, rtol=1e-5)
        hidden, logits = head.step(hidden[-1:], prompt_ids[origin + 2 : origin + 3], torch.tensor([origin + 1]), cache)
        torch.testing.assert_close(logits[-1], step2[origin], atol=1e-5, rtol=1e-5)
        hidden, logits = head.step(hidden, prompt_ids[origin + 3 : origin + 4], torch.tensor([origin + 2]), cache)
        torch.testing.assert_close(logits[-1], step3[origin], atol=1e-5, rtol=1e-5)
