"""Hand-built logits for the verifier: greedy prefix matching and edge cases of speculative sampling."""

from __future__ import annotations

import torch

from specdec import VerifyResult, greedy_verify, speculative_sample

VOCAB = 10


def scores_with_argmax(argmax: list[int], vocab: int = VOCAB) -> torch.Tensor:
    """FloatTensor [len(argmax), vocab] whose row i peaks at argmax[i]."""
    scores = torch.randn(len(argmax), vocab, generator=torch.Generator().manual_seed(len(argmax))) * 0.1
    scores[torch.arange(len(argmax)), torch.tensor(argmax)] = 5.0
    return scores


def ids(*tokens: int) -> torch.Tensor:
    return torch.tensor(tokens, dtype=torch.long)


def test_all_accepted_plus_bonus():
    result = greedy_verify(scores_with_argmax([5, 7, 9, 3]), ids(5, 7, 9))
    assert result == VerifyResult(token_ids=[5, 7, 9, 3], num_accepted=3)


def test_first_rejected():
    result = greedy_verify(scores_with_argmax([5, 7, 9, 3]), ids(4, 7, 9))
    assert result == VerifyResult(token_ids=[5], num_accepted=0)


def test_middle_rejected():
    result = greedy_verify(scores_with_argmax([5, 7, 9, 3]), ids(5, 8, 9))
    assert result == VerifyResult(token_ids=[5, 7], num_accepted=1)


def test_last_rejected():
    result = greedy_verify(scores_with_argmax([5, 7, 9, 3]), ids(5, 7, 1))
    assert result == VerifyResult(token_ids=[5, 7, 9], num_accepted=2)


def test_later_matches_after_a_rejection_do_not_count():
    result = greedy_verify(scores_with_argmax([5, 7, 9, 3]), ids(0, 7, 9))
    assert result == VerifyResult(token_ids=[5], num_accepted=0)


def test_empty_draft_yields_the_targets_token():
    result = greedy_verify(scores_with_argmax([6]), ids())
    assert result == VerifyResult(token_ids=[6], num_accepted=0)


def test_ties_pick_the_lowest_id_like_generate():
    scores = torch.zeros(2, VOCAB)
    scores[0, [3, 8]] = 1.0
    scores[1, [2, 4]] = 1.0
    assert greedy_verify(scores, ids(3)) == VerifyResult(token_ids=[3, 2], num_accepted=1)
    assert greedy_verify(scores, ids(8)) == VerifyResult(token_ids=[3], num_accepted=0)


def test_masked_scores_and_float64():
    scores = scores_with_argmax([1, 2]).double()
    scores[0, 1] = -float("inf")  # a processor banned the raw argmax
    expected = int(scores[0].argmax())
    assert greedy_verify(scores, ids(1)) == VerifyResult(token_ids=[expected], num_accepted=0)


def test_draft_ids_on_another_device_or_dtype_are_accepted():
    result = greedy_verify(scores_with_argmax([5, 7]), torch.tensor([5], dtype=torch.int32))
    assert result == VerifyResult(token_ids=[5, 7], num_accepted=1)
    assert all(type(t) is int for t in result.token_ids)


def one_hot(rows: list[int], vocab: int = VOCAB) -> torch.Tensor:
    probs = torch.zeros(len(rows), vocab)
    probs[torch.arange(len(rows)), torch.tensor(rows)] = 1.0
    return probs


def test_speculative_sample_deterministic_target():
    """With one-hot target probabilities sampling is greedy: same answers as greedy_verify."""
    generator = torch.Generator().manual_seed(0)
    target_probs = one_hot([5, 7, 9, 3])
    for draft, expected in [((5, 7, 9), [5, 7, 9, 3]), ((4, 7, 9), [5]), ((5, 8, 9), [5, 7]), ((), None)]:
        draft_ids = ids(*draft)
        rows = target_probs[: len(draft) + 1]
        for draft_probs in (None, torch.full((len(draft), VOCAB), 1.0 / VOCAB)):
            result = speculative_sample(rows, draft_ids, draft_probs, generator)
            assert result == greedy_verify(rows, draft_ids)
            if expected is not None:
                assert result.token_ids == expected


def test_speculative_sample_rejected_one_hot_draft_never_recovers_the_same_token():
    generator = torch.Generator().manual_seed(1)
    target_probs = torch.full((2, VOCAB), 1.0 / VOCAB)
    for _ in range(200):
        result = speculative_sample(target_probs, ids(4), None, generator)
        if result.num_accepted == 0:
            assert result.token_ids[0] != 4  # the residual max(0, p - onehot(4)) has no mass on 4


def test_speculative_sample_zero_probability_draft_is_rejected():
    generator = torch.Generator().manual_seed(2)
    target_probs = torch.zeros(2, VOCAB)
    target_probs[:, :2] = 0.5
    draft_probs = torch.full((1, VOCAB), 1.0 / VOCAB)
    for _ in range(100):
        result = speculative_sample(target_probs, ids(7), draft_probs, generator)
        assert result.num_accepted == 0 and result.token_ids[0] in (0, 1)
