"""A drafter with a fixed acceptance rate, for tests and benchmarks."""

from __future__ import annotations

import random

import torch

from specdec import DraftBlock, DraftContext, InvalidArgumentError

__all__ = ["OracleDrafter"]


class OracleDrafter:
    """Proposes the reference continuation, each token right with probability ``acceptance``.

    ``reference_ids`` is a 1-D tensor: the prompt followed by the continuation
    the target would produce (for greedy decoding, its ``generate`` output). At
    each position the drafter proposes the reference token with probability
    ``acceptance`` and a different token otherwise, so with greedy decoding the
    per-token acceptance rate is ``acceptance``. The draws come from ``seed``
    alone, so runs repeat exactly. Past the end of the reference it proposes nothing.
    """

    vocab_size: int | None = None

    def __init__(
        self, reference_ids: torch.Tensor, acceptance: float, seed: int = 0, *, num_draft_tokens: int = 4
    ) -> None:
        reference = torch.as_tensor(reference_ids)
        if reference.dim() == 2 and reference.shape[0] == 1:
            reference = reference[0]
        if reference.dim() != 1 or reference.numel() == 0:
            raise InvalidArgumentError("reference_ids must be a non-empty 1-D tensor: the prompt and its continuation")
        if not isinstance(acceptance, (int, float)) or not 0.0 <= acceptance <= 1.0:
            raise InvalidArgumentError(f"acceptance must be in [0, 1], got {acceptance!r}")
        if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
            raise InvalidArgumentError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
        self.reference = reference.tolist()
        self.acceptance = float(acceptance)
        self.seed = seed
        self.default_num_draft_tokens = num_draft_tokens
        self._rng = random.Random(seed)
        self._position = 0
        self._vocab_size = 0

    def begin(self, context: DraftContext) -> None:
        prompt = context.prompt_ids.tolist()
        if self.reference[: len(prompt)] != prompt:
            raise InvalidArgumentError("reference_ids must start with the prompt")
        self._rng = random.Random(self.seed)
        self._position = len(prompt)
        self._vocab_size = context.vocab_size

    def propose(self, max_tokens: int) -> DraftBlock:
        proposal = []
        for position in range(self._position, min(self._position + max_tokens, len(self.reference))):
            right = self.reference[position]
            if self._rng.random() < self.acceptance:
                proposal.append(right)
            else:
                proposal.append((right + 1 + self._rng.randrange(self._vocab_size - 1)) % self._vocab_size)
        return DraftBlock(torch.tensor(proposal, dtype=torch.long))

    def update(self, token_ids: list[int], num_accepted: int) -> None:
        self._position += len(token_ids)

    def end(self) -> None:
        pass
