"""The draft vocabulary: a subset of the target's, and the map between the two.

A head may predict over ``draft_vocab`` ids only (published EAGLE-3 heads use 32k of a 128k
vocabulary). The checkpoints carry ``d2t`` (LongTensor [draft_vocab]) with
``target_id = draft_id + d2t[draft_id]`` and ``t2d`` (BoolTensor [target_vocab], True where a
target id is in the draft vocabulary).

For lossless speculative sampling the drafter reports its distribution over the *target*
vocabulary: draft logits are scattered to their target ids and every other id gets ``-inf``, so
tokens outside the draft vocabulary have draft probability 0 (and stay reachable through the
residual ``norm(max(0, p - q))`` of the verifier).
"""

from __future__ import annotations

import torch

from specdec import InvalidArgumentError

__all__ = ["check_d2t", "t2d_from_d2t", "to_target_logits", "draft_vocab_from_counts"]


def check_d2t(d2t: torch.Tensor, target_vocab: int) -> torch.Tensor:
    """Validate ``d2t`` and return the target ids ``arange(draft_vocab) + d2t`` (LongTensor [draft_vocab])."""
    if d2t.dim() != 1 or d2t.dtype.is_floating_point or d2t.dtype == torch.bool:
        raise InvalidArgumentError(f"d2t must be a 1-D integer tensor, got {d2t.dtype} of shape {tuple(d2t.shape)}")
    target_ids = torch.arange(d2t.shape[0], device=d2t.device) + d2t.long()
    if d2t.numel() and (int(target_ids.min()) < 0 or int(target_ids.max()) >= target_vocab):
        raise InvalidArgumentError(
            f"d2t maps draft ids to target ids in [{int(target_ids.min())}, {int(target_ids.max())}], "
            f"outside the target's vocabulary [0, {target_vocab})"
        )
    if torch.unique(target_ids).numel() != target_ids.numel():
        raise InvalidArgumentError("d2t maps two draft ids to the same target id")
    return target_ids


def t2d_from_d2t(d2t: torch.Tensor, target_vocab: int) -> torch.Tensor:
    """BoolTensor [target_vocab]: True for the target ids the draft vocabulary covers."""
    t2d = torch.zeros(target_vocab, dtype=torch.bool, device=d2t.device)
    t2d[check_d2t(d2t, target_vocab)] = True
    return t2d


def to_target_logits(draft_logits: torch.Tensor, target_ids: torch.Tensor | None, target_vocab: int) -> torch.Tensor:
    """Scatter ``draft_logits [n, draft_vocab]`` to ``[n, target_vocab]``; ids outside the draft vocabulary get -inf.

    ``target_ids=None`` means the identity map (the draft vocabulary is the target's).
    """
    if target_ids is None:
        return draft_logits
    out = draft_logits.new_full((draft_logits.shape[0], target_vocab), float("-inf"))
    out[:, target_ids] = draft_logits
    return out


def draft_vocab_from_counts(counts: torch.Tensor, size: int, always: list[int] | tuple[int, ...] = ()) -> torch.Tensor:
    """``d2t`` for the ``size`` most frequent target ids (``always`` included first, e.g. EOS).

    Args:
        counts: [target_vocab] occurrence counts of each target id in the training data.
        size: the draft vocabulary size, 1..target_vocab.
    """
    vocab = counts.shape[0]
    if not 1 <= size <= vocab:
        raise InvalidArgumentError(f"the draft vocabulary size must be in [1, {vocab}], got {size}")
    scores = counts.double().clone()
    scores[list(always)] = float("inf")
    chosen = torch.sort(torch.topk(scores, size).indices).values  # ascending target ids
    return chosen - torch.arange(size)
