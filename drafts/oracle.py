"""A drafter with a fixed acceptance rate, for tests and benchmarks, and the oracle's draw.

:func:`oracle_token` decides whether the draft at a given position is right
and, if not, which wrong token it is. :class:`OracleDrafter` and the
benchmark's oracle for Hugging Face assisted generation
(:mod:`specdec.bench.oracle_assistant`) both use it, so both systems see the
same right/wrong pattern.

The draw depends on ``(seed, position)`` only, not on how many draws came
before. Every draft length, ``auto`` included, therefore meets the same
pattern over the same text: two runs that differ only in ``k`` differ in speed
because of ``k``, not because one of them was luckier with its draws.
"""

from __future__ import annotations

import random

import torch
from transformers import PreTrainedModel

from specdec import CausalLMAdapter, DraftBlock, DraftContext, InvalidArgumentError

__all__ = ["OracleDrafter", "oracle_token"]


def oracle_token(reference: list[int], position: int, acceptance: float, seed: int, vocab_size: int) -> int:
    """The token an oracle with per-token acceptance ``acceptance`` drafts at ``position``.

    With probability ``acceptance`` it is ``reference[position]`` (0 past the
    end of the reference); otherwise a different token, uniform over the rest
    of the vocabulary.
    """
    right = reference[position] if position < len(reference) else 0
    rng = random.Random(f"specdec-oracle:{seed}:{position}")
    if rng.random() < acceptance:
        return right
    return (right + 1 + rng.randrange(vocab_size - 1)) % vocab_size


class OracleDrafter:
    """Proposes the reference continuation, each token right with probability ``acceptance``.

    ``reference_ids`` is a 1-D tensor: the prompt followed by the continuation
    the target would produce (for greedy decoding, its ``generate`` output). At
    each position the drafter proposes the reference token with probability
    ``acceptance`` and a different token otherwise, so with greedy decoding the
    per-token acceptance rate is ``acceptance``. The draw at a position depends
    on ``(seed, position)`` alone (:func:`oracle_token`), so runs
    repeat exactly and every draft length meets the same right/wrong pattern.
    Past the end of the reference it proposes nothing.

    ``cost_model`` (optional, any HF causal LM) makes drafting cost what a real
    draft model costs: it runs like a draft model with its own KV cache (one
    forward per proposed token, rolled back on rejection) and its outputs are
    discarded. Benchmarks use it to fix the acceptance rate and the draft cost.
    """

    vocab_size: int | None = None

    def __init__(
        self,
        reference_ids: torch.Tensor,
        acceptance: float,
        seed: int = 0,
        *,
        num_draft_tokens: int = 4,
        cost_model: PreTrainedModel | None = None,
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
        self._position = 0
        self._vocab_size = 0
        self._cost = CausalLMAdapter(cost_model) if cost_model is not None else None
        self._committed = 0  # tokens of the sequence so far (prompt + verified)

    def begin(self, context: DraftContext) -> None:
        prompt = context.prompt_ids.tolist()
        if self.reference[: len(prompt)] != prompt:
            raise InvalidArgumentError("reference_ids must start with the prompt")
        self._position = len(prompt)
        self._vocab_size = context.vocab_size
        self._committed = len(prompt)
        if self._cost is not None:
            self._cost.reset()

    def propose(self, max_tokens: int) -> DraftBlock:
        proposal = []
        for position in range(self._position, min(self._position + max_tokens, len(self.reference))):
            proposal.append(oracle_token(self.reference, position, self.acceptance, self.seed, self._vocab_size))
        if self._cost is not None and proposal:
            self._pay_draft_cost(proposal)
        return DraftBlock(torch.tensor(proposal, dtype=torch.long))

    def _pay_draft_cost(self, proposal: list[int]) -> None:
        """Run the cost model as a draft model would: one forward per proposed token."""
        cost = self._cost
        assert cost is not None
        vocab = cost.vocab_size
        # The first forward catches up on the verified tokens the cache lacks (as ModelDrafter does).
        pending = [t % vocab for t in self.reference[cost.length : self._committed]] or [0]
        cost.forward(torch.tensor(pending, dtype=torch.long), last_only=True)
        for token in proposal[:-1]:
            cost.forward(torch.tensor([token % vocab], dtype=torch.long))

    def update(self, token_ids: list[int], num_accepted: int) -> None:
        self._position += len(token_ids)
        if self._cost is not None and self._cost.length > self._committed:
            self._cost.truncate(min(self._cost.length, self._committed + num_accepted))
        self._committed += len(token_ids)

    def end(self) -> None:
        pass
