"""Small typed contracts passed between the generator, drafters and sinks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["DraftBlock", "VerifyResult", "VerifiedBlock", "SpecStats", "SpecOutput", "FinishReason"]

from .finish import FinishReason


@dataclass(frozen=True)
class DraftBlock:
    """Tokens a drafter proposes for the next positions.

    An empty proposal is a block of length 0 (see :meth:`empty`), never ``None``.
    """

    token_ids: torch.Tensor  # LongTensor [k]
    draft_probs: torch.Tensor | None = None  # FloatTensor [k, vocab]; None = deterministic (one-hot) proposal

    def __post_init__(self) -> None:
        if self.token_ids.dim() != 1:
            raise ValueError(f"DraftBlock.token_ids must be 1-D, got shape {tuple(self.token_ids.shape)}")
        if self.draft_probs is not None and (
            self.draft_probs.dim() != 2 or self.draft_probs.shape[0] != self.token_ids.shape[0]
        ):
            raise ValueError(
                "DraftBlock.draft_probs must have shape [k, vocab] matching token_ids "
                f"(k={self.token_ids.shape[0]}), got {tuple(self.draft_probs.shape)}"
            )

    def __len__(self) -> int:
        return int(self.token_ids.shape[0])

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> DraftBlock:
        return DraftBlock(torch.empty(0, dtype=torch.long, device=device))


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of verifying one draft block against the target.

    ``token_ids`` holds the accepted draft tokens followed by exactly one token
    from the target: the *recovered* token (at the first rejection) or the
    *bonus* token (when every draft was accepted).
    """

    token_ids: list[int]  # [num_accepted + 1]
    num_accepted: int  # draft tokens accepted, 0..k


@dataclass(frozen=True)
class VerifiedBlock:
    """What a sink receives once per verify pass that committed tokens.

    ``token_ids`` are appended to row ``row``'s sequence, in order: the first
    ``accepted`` of them are draft tokens the target accepted, the rest (at most
    one) the target's own token. ``drafted`` counts the drafts proposed for the
    step, so ``drafted - accepted`` of them were rejected or cut off by EOS, a
    stop rule or the token budget.
    """

    step: int  # the row's verify pass, 0, 1, 2, ...
    row: int  # the batch row (0 for a single sequence)
    token_ids: tuple[int, ...]  # [accepted + (0 or 1)]
    drafted: int
    accepted: int


@dataclass
class SpecStats:
    """Counters of one ``generate`` call."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0  # verify passes of the target (one per loop step)
    target_forwards: int = 0  # every target forward, the prefill included
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    accepted_per_position: list[int] = field(default_factory=list)  # [k_max]: accepted at draft position i
    drafted_per_position: list[int] = field(default_factory=list)  # [k_max]: proposed at draft position i
    wall_time_s: float = 0.0
    tested: int = 0  # draft tokens the target judged: those after a step's first rejection never are
    shared_prefix_tokens: int = 0  # prompt positions copied from another row's cache instead of prefilled

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens over proposed draft tokens (0.0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def conditional_acceptance(self) -> float:
        """Accepted over tested draft tokens: the per-token alpha of Leviathan et al. (0.0 when nothing was tested).

        Lower than 1 only through rejections, whereas ``acceptance_rate`` also
        counts the untested drafts after a rejection as failures.
        """
        return self.accepted / self.tested if self.tested else 0.0

    @property
    def mean_accepted_per_step(self) -> float:
        """New tokens per verify pass: accepted drafts plus the target's own token."""
        return self.new_tokens / self.steps if self.steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def record_step(self, num_drafted: int, num_accepted: int, *, rejected: bool | None = None) -> None:
        """Count one verify pass. ``rejected``: whether a draft was rejected (default: fewer accepted than drafted).

        Pass it when a block was cut short after verification (EOS, a stop
        rule, the token budget): the drafts lost to the cut were not rejected.
        """
        if rejected is None:
            rejected = num_accepted < num_drafted
        self.steps += 1
        self.target_forwards += 1
        self.drafted += num_drafted
        self.accepted += num_accepted
        self.tested += min(num_accepted + int(rejected), num_drafted)
        grow = num_drafted - len(self.drafted_per_position)
        if grow > 0:
            self.drafted_per_position.extend([0] * grow)
            self.accepted_per_position.extend([0] * grow)
        for i in range(num_drafted):
            self.drafted_per_position[i] += 1
        for i in range(num_accepted):
            self.accepted_per_position[i] += 1

    @classmethod
    def total(cls, rows: list[SpecStats], *, target_forwards: int) -> SpecStats:
        """The sum over rows; ``target_forwards`` counts shared forward passes once, ``wall_time_s`` is the longest."""
        total = cls(target_forwards=target_forwards)
        width = max((len(r.drafted_per_position) for r in rows), default=0)
        total.drafted_per_position = [0] * width
        total.accepted_per_position = [0] * width
        for r in rows:
            for name in ("prompt_tokens", "new_tokens", "steps", "drafted", "accepted", "tested",
                         "shared_prefix_tokens"):
                setattr(total, name, getattr(total, name) + getattr(r, name))
            for i, (d, a) in enumerate(zip(r.drafted_per_position, r.accepted_per_position, strict=False)):
                total.drafted_per_position[i] += d
                total.accepted_per_position[i] += a
            total.wall_time_s = max(total.wall_time_s, r.wall_time_s)
        return total

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "steps": self.steps,
            "target_forwards": self.target_forwards,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "tested": self.tested,
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "acceptance_rate": self.acceptance_rate,
            "conditional_acceptance": self.conditional_acceptance,
            "mean_accepted_per_step": self.mean_accepted_per_step,
            "accepted_per_position": list(self.accepted_per_position),
            "drafted_per_position": list(self.drafted_per_position),
            "wall_time_s": self.wall_time_s,
            "tokens_per_s": self.tokens_per_s,
        }


@dataclass
class SpecOutput:
    """What :meth:`SpeculativeGenerator.generate` returns.

    For one sequence ``sequences`` is [1, prompt_len + new_len]. For a batch
    it is [batch, width + max_new_len] laid out like HF ``generate`` on a
    left-padded batch: each row is left padding, its prompt, its new tokens,
    then ``pad_token_id`` up to the width (``width`` is the input's width).
    ``stats`` sums the rows (``target_forwards`` counts shared passes once),
    ``row_stats[r]`` and ``finish_reasons[r]`` are row ``r``'s own, and
    ``finish_reason`` is row 0's.
    """

    sequences: torch.Tensor  # LongTensor [batch, length]
    stats: SpecStats
    finish_reason: FinishReason = "length"
    row_stats: list[SpecStats] = field(default_factory=list)
    finish_reasons: list[FinishReason] = field(default_factory=list)
