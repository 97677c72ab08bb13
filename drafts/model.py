"""A small Hugging Face model as the drafter, with its own KV cache."""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel

from specdec import CausalLMAdapter, DraftBlock, DraftContext, InvalidArgumentError

__all__ = ["ModelDrafter"]


class ModelDrafter:
    """Drafts with a smaller causal LM that shares the target's vocabulary.

    One draft forward per token, drawn from the draft distribution shaped like
    the target's (greedy: its argmax); it returns those probabilities so
    speculative sampling stays exact. Rejected tokens are rolled back out of
    its cache. The draft model may sit on another device than the target.

    With a fixed k it proposes exactly ``k`` tokens per step (no hidden early
    stop). When the generator picks k itself (``num_draft_tokens="auto"``) it
    also stops as soon as its own probability of the drafted prefix (the
    product of each drafted token's probability under the shaped draft
    distribution) falls below ``min_prefix_confidence``, sparing draft forwards
    and verify positions the target would most likely reject. Stopping depends
    only on the draft's own distribution, so the output stays exact.
    ``min_prefix_confidence=0`` turns this off. The controller's acceptance
    estimate then covers only the positions proposed (the confident ones), so
    it runs higher and its k acts as a cap that the drafter trims.
    """

    def __init__(
        self, model: PreTrainedModel, *, num_draft_tokens: int = 4, min_prefix_confidence: float = 0.2
    ) -> None:
        if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
            raise InvalidArgumentError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
        if (
            isinstance(min_prefix_confidence, bool)
            or not isinstance(min_prefix_confidence, (int, float))
            or not 0.0 <= min_prefix_confidence < 1.0
        ):
            raise InvalidArgumentError(f"min_prefix_confidence must be in [0, 1), got {min_prefix_confidence!r}")
        self.model_adapter = CausalLMAdapter(model)
        self.default_num_draft_tokens = num_draft_tokens
        self.min_prefix_confidence = float(min_prefix_confidence)
        self.vocab_size: int | None = self.model_adapter.vocab_size
        self._context: DraftContext | None = None
        self._committed: list[int] = []
        self._generator: torch.Generator | None = None

    def for_row(self) -> ModelDrafter:
        """A copy on the same draft model with its own KV cache and state, for another row of a batch."""
        clone = copy.copy(self)
        clone.model_adapter = CausalLMAdapter(self.model_adapter.model)
        clone._context = None
        clone._committed = []
        clone._generator = None
        return clone

    def begin(self, context: DraftContext) -> None:
        self._context = context
        self._committed = context.prompt_ids.tolist()
        self.model_adapter.reset()
        self._generator = torch.Generator(device=self.model_adapter.device)
        self._generator.manual_seed(context.seed)

    def propose(self, max_tokens: int) -> DraftBlock:
        adapter, context = self.model_adapter, self._context
        assert context is not None, "begin() must come first"
        device = adapter.device
        k = max_tokens
        if adapter.context_length is not None:
            k = min(k, adapter.context_length - len(self._committed))
        if k < 1:
            return DraftBlock.empty(device)
        pending = torch.tensor(self._committed[adapter.length :], dtype=torch.long, device=device)
        logits = adapter.forward(pending, last_only=True)  # [1, vocab]
        shaper = context.shaper
        history = (
            torch.tensor(self._committed, dtype=torch.long, device=device) if shaper.reads_history else pending[-1:]
        )
        tokens: list[torch.Tensor] = []  # each LongTensor [1]
        probs: list[torch.Tensor] = []  # each FloatTensor [1, vocab]
        stop_below = self.min_prefix_confidence if context.adaptive else 0.0
        prefix_confidence = 1.0
        for i in range(k):
            may_stop = stop_below > 0.0 and i + 1 < k  # after the last token there is nothing left to spare
            if shaper.do_sample:
                p = shaper.probs(history, logits)
                token = torch.multinomial(p, 1, generator=self._generator)[0]
                probs.append(p)
                confidence = p[0, token] if may_stop else None
            else:
                scores = shaper.scores(history, logits)
                token = scores.argmax(dim=-1)
                confidence = torch.softmax(scores[0].float(), dim=-1)[token] if may_stop else None
            tokens.append(token)
            if confidence is not None:
                prefix_confidence *= float(confidence)  # one host sync per draft token, only in "auto" mode
                if prefix_confidence < stop_below:
                    break
            if i + 1 < k:
                logits = adapter.forward(token)
                if shaper.reads_history:
                    history = torch.cat([history, token])
        return DraftBlock(
            token_ids=torch.cat(tokens),
            draft_probs=torch.cat(probs) if probs else None,
        )

    def update(self, token_ids: list[int], num_accepted: int) -> None:
        adapter = self.model_adapter
        if adapter.length > len(self._committed):
            # The cache holds drafts past the committed sequence: keep the accepted ones.
            adapter.truncate(min(adapter.length, len(self._committed) + num_accepted))
        self._committed.extend(token_ids)

    def end(self) -> None:
        self.model_adapter.reset()
        self._context = None
        self._committed = []
