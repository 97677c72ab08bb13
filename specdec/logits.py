"""Turning raw logits into the distribution the target samples from.

The target and every drafter that reports probabilities must shape their
logits the same way (the same processors, temperature, top-k and top-p),
otherwise speculative sampling would be exact for the wrong distribution.
:class:`LogitsShaper` is that one shared recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
from transformers import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

__all__ = ["LogitsShaper"]


@dataclass(frozen=True)
class LogitsShaper:
    """Apply user logits processors, then (when sampling) temperature, top-k and top-p.

    The order is the one Hugging Face ``generate`` uses, so sampling here draws
    from exactly the distribution ``generate`` draws from.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    processors: LogitsProcessorList | None = None  # user processors; may read the token history
    extra_warpers: LogitsProcessorList | None = None  # sampling warpers after top-p (min-p, typical, ...)

    if TYPE_CHECKING:  # set in __post_init__; not a dataclass field
        _warpers: LogitsProcessorList = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        warpers = LogitsProcessorList()
        if self.do_sample:
            if self.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k is not None:
                warpers.append(TopKLogitsWarper(self.top_k))
            if self.top_p is not None and self.top_p < 1.0:
                warpers.append(TopPLogitsWarper(self.top_p))
            if self.extra_warpers:
                warpers.extend(self.extra_warpers)
        object.__setattr__(self, "_warpers", warpers)

    @property
    def reads_history(self) -> bool:
        """True when user processors may depend on the tokens before each position."""
        return bool(self.processors)

    def scores(self, token_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Processed scores for the last ``m`` positions of a sequence.

        Args:
            token_ids: LongTensor [L], the sequence; row ``m - 1`` of ``logits``
                predicts the token after all of it, row ``i`` the token after
                ``token_ids[:L - m + 1 + i]``.
            logits: FloatTensor [m, vocab], raw model logits.

        Returns:
            FloatTensor [m, vocab] of processed scores (float32 at least).
        """
        scores = logits if logits.dtype == torch.float64 else logits.float()
        if self.processors:
            length, rows = token_ids.shape[0], scores.shape[0]
            processed = []
            for i in range(rows):
                prefix = token_ids[: length - rows + 1 + i].unsqueeze(0)  # [1, L_i]
                processed.append(self.processors(cast(torch.LongTensor, prefix), scores[i : i + 1]))
            scores = torch.cat(processed, dim=0)
        if self._warpers:
            # The warpers only look at scores, so they run on all rows at once.
            scores = self._warpers(cast(torch.LongTensor, token_ids.unsqueeze(0)), scores)
        return scores

    def probs(self, token_ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Softmax of :meth:`scores`: FloatTensor [m, vocab], rows summing to 1."""
        return torch.softmax(self.scores(token_ids, logits), dim=-1)
