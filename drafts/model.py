"""A small Hugging Face model as the drafter, with its own KV cache."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from specdec import CausalLMAdapter, DraftBlock, DraftContext, InvalidArgumentError

__all__ = ["ModelDrafter"]


class ModelDrafter:
    """Drafts with a smaller causal LM that shares the target's vocabulary.

    It proposes exactly ``k`` tokens per step (no hidden early stop), one draft
    forward per token, drawn from the draft distribution shaped like the
    target's (greedy: its argmax) and returns those probabilities so speculative
    sampling stays exact. Rejected tokens are rolled back out of its cache.

    The draft model may sit on another device than the target.
    """

    def __init__(self, model: PreTrainedModel, *, num_draft_tokens: int = 4) -> None:
        if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
            raise InvalidArgumentError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
        self.model_adapter = CausalLMAdapter(model)
        self.default_num_draft_tokens = num_draft_tokens
        self.vocab_size: int | None = self.model_adapter.vocab_size
        self._context: DraftContext | None = None
        self._committed: list[int] = []
        self._cached_after_propose = 0  # cache length right after the last propose
        self._generator: torch.Generator | None = None

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
        for i in range(k):
            if shaper.do_sample:
                p = shaper.probs(history, logits)
                token = torch.multinomial(p, 1, generator=self._generator)[0]
                probs.append(p)
            else:
                token = shaper.scores(history, logits).argmax(dim=-1)
            tokens.append(token)
            if i + 1 < k:
                logits = adapter.forward(token)
                if shaper.reads_history:
                    history = torch.cat([history, token])
        self._cached_after_propose = adapter.length
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
