"""``EagleDrafter``: drafts a chain of tokens with an EAGLE head from the target's hidden states.

The generator hands the drafter the target's hidden states (``target_layers``) for every position
the target verified and kept (:meth:`observe_hidden_states`), so the head always starts from the
target's own features: a step at feature position ``i`` reads ``x_{i+1}`` and predicts ``x_{i+2}``.

One generation, with ``F`` target features received and the head's cache holding ``F`` positions
computed from them::

    propose(k):  head over the new target features (positions m..F-1)  -> d1
                 head over (its own output, d1) at position F            -> d2   ... up to dk
    update():    roll the head's cache back to F (the chain used the head's own features;
                 the accepted positions come back from the target with its features)
"""

from __future__ import annotations

from typing import cast

import torch

from specdec import DraftBlock, DraftContext, InvalidArgumentError

from .head import EagleHead, HeadKV
from .vocab import to_target_logits

__all__ = ["EagleDrafter"]


class EagleDrafter:
    """Implements ``specdec.Drafter`` and its hidden-state extension (``target_layers``).

    Example::

        head = load_head("path/to/head", target)
        gen = SpeculativeGenerator(target, EagleDrafter(head))

    Proposals are chains (``DraftBlock``); the head's per-step outputs (``next_hidden``, logits)
    are what a tree proposer would branch on.
    """

    def __init__(self, head: EagleHead, *, num_draft_tokens: int = 4) -> None:
        if not isinstance(head, EagleHead):
            raise InvalidArgumentError(f"EagleDrafter needs an EagleHead, got {type(head).__name__}")
        if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
            raise InvalidArgumentError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
        self.head = head
        self.default_num_draft_tokens = num_draft_tokens
        self.vocab_size: int | None = head.config.vocab_size
        self.target_layers: tuple[int, ...] = head.config.target_layers
        param = head.lm_head.weight
        self._device, self._dtype = param.device, param.dtype
        reduced = head.config.draft_vocab_size != head.config.vocab_size
        self._target_ids = head.target_ids if reduced else None  # [draft_vocab] or identity
        self._context: DraftContext | None = None
        self._committed: list[int] = []
        self._features: list[torch.Tensor] = []  # pending target features, each [n, layers, hidden]
        self._received = 0  # target features received: positions 0..received-1
        self._cache: HeadKV | None = None
        self._settled = 0  # cache positions computed from target features
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # head output at the last settled position
        self._generator: torch.Generator | None = None

    def for_row(self) -> EagleDrafter:
        """A drafter on the same head with its own cache and state, for another row of a batch."""
        return EagleDrafter(self.head, num_draft_tokens=self.default_num_draft_tokens)

    # ------------------------------------------------------------------ protocol

    def begin(self, context: DraftContext) -> None:
        self._context = context
        self._committed = context.prompt_ids.tolist()
        self._features, self._received, self._settled, self._last = [], 0, 0, None
        self._cache = HeadKV.empty(self.head.config, device=self._device, dtype=self._dtype)
        self._generator = torch.Generator(device=self._device)
        self._generator.manual_seed(context.seed)

    def observe_hidden_states(self, hidden_states: torch.Tensor) -> None:
        """The target's hidden states ``[n, len(target_layers), hidden]`` for its next ``n`` kept positions."""
        expected = (len(self.target_layers), self.head.config.target_hidden_size)
        if hidden_states.dim() != 3 or tuple(hidden_states.shape[1:]) != expected:
            raise InvalidArgumentError(
                f"hidden states must have shape [n, {expected[0]}, {expected[1]}], got {tuple(hidden_states.shape)}"
            )
        if hidden_states.shape[0]:
            self._features.append(hidden_states.to(self._device, self._dtype))
            self._received += int(hidden_states.shape[0])

    @torch.inference_mode()
    def propose(self, max_tokens: int) -> DraftBlock:
        context, cache = self._context, self._cache
        assert context is not None and cache is not None, "begin() must come first"
        if self._received == 0 or max_tokens < 1:
            return DraftBlock.empty(self._device)  # nothing verified yet (a one-token prompt)
        if len(self._committed) <= self._received:
            raise RuntimeError("the target's hidden states ran ahead of the committed tokens")
        start, end = self._settled, self._received
        head = self.head
        if end > start:
            features = torch.cat(self._features, dim=0)  # [end - start, layers, hidden]
            self._features = []
            tokens = torch.tensor(self._committed[start + 1 : end + 1], dtype=torch.long, device=self._device)
            positions = torch.arange(start, end, device=self._device)
            hidden, logits = head.step(head.project(features), tokens, positions, cache)
            self._settled = end
            self._last = (hidden[-1:], logits[-1:])
        assert self._last is not None
        hidden, logits = self._last
        return self._chain(hidden, logits, max_tokens, context)

    def update(self, token_ids: list[int], num_accepted: int) -> None:
        assert self._cache is not None, "begin() must come first"
        self._cache.truncate(self._settled)  # drop the chain; kept positions return with target features
        self._committed.extend(token_ids)

    def end(self) -> None:
        self._context, self._cache, self._last = None, None, None
        self._committed, self._features = [], []
        self._received = self._settled = 0

    # ------------------------------------------------------------------ drafting

    def _chain(self, hidden: torch.Tensor, logits: torch.Tensor, k: int, context: DraftContext) -> DraftBlock:
        shaper, vocab = context.shaper, cast(int, self.vocab_size)  # always set from the head config
        history = (
            torch.tensor(self._committed, dtype=torch.long, device=self._device) if shaper.reads_history else None
        )
        tokens: list[torch.Tensor] = []  # each LongTensor [1] (target ids)
        probs: list[torch.Tensor] = []  # each FloatTensor [1, vocab]
        position = self._settled  # the first chain step sits after the settled positions
        for i in range(k):
            if shaper.do_sample or shaper.reads_history:
                scores = shaper.scores(
                    history if history is not None else self._no_history(),
                    to_target_logits(logits, self._target_ids, vocab),
                )
                if shaper.reads_history and not bool(torch.isfinite(scores).any()):
                    break  # the processors banned every draft-vocabulary token here
                if shaper.do_sample:
                    p = torch.softmax(scores, dim=-1)  # [1, vocab]
                    token = torch.multinomial(p, 1, generator=self._generator)[0]
                    probs.append(p)
                else:
                    token = scores.argmax(dim=-1)
            else:
                best = logits.argmax(dim=-1)  # [1] draft id
                token = self._target_ids[best] if self._target_ids is not None else best
            tokens.append(token)
            if i + 1 < k:
                if history is not None:
                    history = torch.cat([history, token])
                positions = torch.tensor([position], device=self._device)
                hidden, logits = self.head.step(hidden, token, positions, self._cache)
                position += 1
        if not tokens:
            return DraftBlock.empty(self._device)
        return DraftBlock(token_ids=torch.cat(tokens), draft_probs=torch.cat(probs) if probs else None)

    def _no_history(self) -> torch.Tensor:
        return torch.tensor(self._committed[-1:], dtype=torch.long, device=self._device)
