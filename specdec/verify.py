"""Verification math: greedy prefix matching and speculative sampling.

Glossary
--------
draft tokens
    The ``k`` tokens ``d_1..d_k`` a drafter proposes, with draft probabilities
    ``draft_probs`` (``q`` in the papers) when it has them.
target probabilities
    ``target_probs`` (``p`` in the papers): the target's distribution at each
    of the ``k + 1`` positions of one verify pass.
accepted
    The leading draft tokens the target keeps.
recovered token
    At the first rejected position, a token drawn from the residual
    ``norm(max(0, p - q))``; with greedy decoding, the target's argmax there.
bonus token
    When all ``k`` draft tokens are accepted, one more token drawn from the
    target's distribution at position ``k + 1``, for free.

Speculative sampling (Leviathan et al. 2023, Chen et al. 2023) accepts draft
token ``d_i`` with probability ``min(1, p_i(d_i) / q_i(d_i))``. Together with
the recovered and bonus tokens, the result is distributed exactly as sampling
from the target alone. A drafter without probabilities counts as one-hot ``q``.

Every function issues exactly one device-to-host copy.
"""

from __future__ import annotations

import torch

from .types import VerifyResult

__all__ = ["greedy_verify", "speculative_sample"]


def greedy_verify(target_scores: torch.Tensor, draft_ids: torch.Tensor) -> VerifyResult:
    """Keep the longest prefix of the draft that equals the target's argmax.

    Args:
        target_scores: FloatTensor [k + 1, vocab], processed target scores.
        draft_ids: LongTensor [k], the proposed tokens.

    Example: argmax ``[5, 7, 9]`` against draft ``[5, 8]`` accepts ``5`` and
    recovers ``7``: ``VerifyResult(token_ids=[5, 7], num_accepted=1)``.
    """
    k = draft_ids.shape[0]
    target_ids = target_scores.argmax(dim=-1)  # [k + 1]
    both = torch.cat([draft_ids.to(target_ids.device), target_ids]).tolist()
    drafted, chosen = both[:k], both[k:]
    n = 0
    while n < k and drafted[n] == chosen[n]:
        n += 1
    return VerifyResult(token_ids=drafted[:n] + [chosen[n]], num_accepted=n)


def speculative_sample(
    target_probs: torch.Tensor,
    draft_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    generator: torch.Generator,
) -> VerifyResult:
    """Lossless speculative sampling over one verify pass.

    Args:
        target_probs: FloatTensor [k + 1, vocab], the target's processed distributions.
        draft_ids: LongTensor [k], the proposed tokens.
        draft_probs: FloatTensor [k, vocab] the drafter sampled from, or ``None``
            for a deterministic drafter (one-hot ``q`` on each draft token).
        generator: the random source; the same generator state gives the same result.

    The random draws do not depend on the outcome (``k`` uniforms and ``k + 1``
    candidate tokens per call), so a seed fixes the whole generation.
    """
    k = draft_ids.shape[0]
    device = target_probs.device
    draft_ids = draft_ids.to(device)
    rows = torch.arange(k, device=device)
    p_draft = target_probs[rows, draft_ids]  # [k]: p_i(d_i)
    if draft_probs is None:
        q_draft = torch.ones_like(p_draft)
        residual = target_probs[:k].clone()  # [k, vocab]: max(0, p - onehot(d)) is p without d
        residual[rows, draft_ids] = 0.0
    else:
        draft_probs = draft_probs.to(device=device, dtype=target_probs.dtype)
        q_draft = draft_probs[rows, draft_ids]
        residual = (target_probs[:k] - draft_probs).clamp_(min=0.0)
    mass = residual.sum(dim=-1, keepdim=True)  # [k, 1]
    # A zero residual only happens where p == q, where rejection has probability 0;
    # fall back to p so the (unused) candidate is still well defined.
    residual = torch.where(mass > 0, residual / mass.clamp(min=torch.finfo(mass.dtype).tiny), target_probs[:k])
    candidates = torch.cat([residual, target_probs[k:]], dim=0)  # [k + 1, vocab]
    uniforms = torch.rand(k, generator=generator, device=device, dtype=target_probs.dtype)
    accept = uniforms * q_draft < p_draft  # [k]
    picks = torch.multinomial(candidates, 1, generator=generator).squeeze(-1)  # [k + 1]
    host = torch.cat([draft_ids, accept.long(), picks]).tolist()
    drafted, accepted, picked = host[:k], host[k : 2 * k], host[2 * k :]
    n = 0
    while n < k and accepted[n]:
        n += 1
    return VerifyResult(token_ids=drafted[:n] + [picked[n]], num_accepted=n)
