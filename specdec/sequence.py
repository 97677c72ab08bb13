"""One sequence's side of a speculative step: choose k, propose, verify, commit, emit.

A :class:`Sequence` owns everything that is per sequence (its tokens, its
drafter, its draft-length policy, its random generator, its statistics and its
sinks) and nothing that is shared (the target model and its KV cache). The
loop that owns the target calls, per step::

    block = seq.plan()                      # None once the sequence is finished
    logits = <target forward over seq.block_ids(block)>   # [len(block) + 1, vocab]
    seq.commit(logits, block, verify_s)     # accept, roll the drafter back, emit

after which the target's cache must keep ``seq.length - 1`` tokens (every
committed token but the newest, which the next block starts with). With a
hidden-state drafter the loop also passes the target's hidden states: the
prefill's to :meth:`Sequence.prefilled`, each verify pass's to
``commit(..., hidden_states=)``.
"""

from __future__ import annotations

import time
from typing import Protocol, cast

import torch
from transformers import StoppingCriteriaList

from .drafter import DraftContext, Drafter, HiddenStateDrafter
from .errors import DrafterContractError
from .logits import LogitsShaper
from .params import GenerationParams
from .policy import DraftLengthPolicy
from .sinks import BlockEmitter
from .types import DraftBlock, FinishReason, SpecStats, VerifiedBlock
from .verify import greedy_verify, speculative_sample

__all__ = ["Sequence"]


class Cancelled(Protocol):
    def is_set(self) -> bool: ...


class Sequence:
    """The state of one sequence being generated (see the module docstring)."""

    def __init__(
        self,
        *,
        prompt: torch.Tensor,
        params: GenerationParams,
        shaper: LogitsShaper,
        drafter: Drafter,
        policy: DraftLengthPolicy,
        emitter: BlockEmitter,
        vocab_size: int,
        context_length: int | None,
        device: torch.device,
        stopping: StoppingCriteriaList | None = None,
        cancel: Cancelled | None = None,
        row: int = 0,
    ) -> None:
        self.params = params
        self.shaper = shaper
        self.drafter = drafter
        self.policy = policy
        self.emitter = emitter
        self.stopping = stopping
        self.cancel = cancel
        self.row = row
        self.prompt = prompt  # LongTensor [prompt_len], CPU
        self.prompt_len = int(prompt.shape[0])
        self.max_new = params.max_new_tokens
        if context_length is not None:
            self.max_new = min(self.max_new, context_length - self.prompt_len)
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.draft_seed = (seed * 1_000_003 + 1) % 2**62
        self.vocab_size = vocab_size
        # Room for the prompt, the new tokens and one block of drafts.
        capacity = self.prompt_len + params.max_new_tokens + policy.k_max + 1
        self.tokens = torch.empty(capacity, dtype=torch.long, device=device)
        self.tokens[: self.prompt_len] = prompt.to(device)
        self.length = self.prompt_len  # committed tokens in self.tokens
        self.stats = SpecStats(prompt_tokens=self.prompt_len)
        self.step = 0
        self.finish: FinishReason | None = None
        self._plan_started = 0.0
        self._drafted_at = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    def begin(self) -> None:
        """Start the drafter and the sinks on the prompt."""
        self.drafter.begin(
            DraftContext(
                prompt_ids=self.prompt,
                shaper=self.shaper,
                vocab_size=self.vocab_size,
                seed=self.draft_seed,
                max_new_tokens=self.params.max_new_tokens,
                adaptive=self.policy.adaptive,
            )
        )
        self.emitter.start(self.prompt)

    def close(self, *, failed: bool) -> None:
        """End the drafter and the sinks (a streamer's ``end()`` runs here, also on failure)."""
        try:
            if not failed:
                self.policy.finish()
            self.drafter.end()
        finally:
            self.emitter.close()

    @property
    def new_tokens(self) -> int:
        return self.length - self.prompt_len

    @property
    def sequence(self) -> torch.Tensor:
        """LongTensor [length]: the prompt and every committed token."""
        return self.tokens[: self.length]

    # -- one step ----------------------------------------------------------------------------------

    def cancelled(self) -> bool:
        """True (and finished as ``"cancelled"``) once the cancel flag is set."""
        if self.finish is None and self.cancel is not None and self.cancel.is_set():
            self.finish = "cancelled"
        return self.finish == "cancelled"

    def plan(self, k_cap: int | None = None, *, rows: int = 1) -> DraftBlock | None:
        """Choose k (at most ``k_cap``) and propose; ``None`` when the sequence is finished (budget or cancel).

        ``rows``: the decoding rows that share this step's pass (a policy with ``share(rows)`` prices by it).
        """
        if self.finish is None and self.new_tokens >= self.max_new:
            self.finish = "length"
        self.cancelled()
        if self.finish is not None:
            return None
        self._plan_started = time.perf_counter()
        share = getattr(self.policy, "share", None)
        if callable(share):
            share(rows)
        k = min(self.policy.choose(), self.max_new - self.new_tokens - 1)
        if k_cap is not None:
            k = min(k, k_cap)
        block = self.drafter.propose(k) if k > 0 else DraftBlock.empty()
        self._drafted_at = time.perf_counter()
        if len(block) > k:
            raise DrafterContractError(
                f"drafter {type(self.drafter).__name__} proposed {len(block)} tokens when asked for at most {k}"
            )
        self.emitter.draft(self.step, block.token_ids.tolist())
        return block

    def block_ids(self, block: DraftBlock) -> torch.Tensor:
        """LongTensor [len(block) + 1]: the newest committed token and the drafts, the positions to score."""
        n = len(block)
        self.tokens[self.length : self.length + n] = block.token_ids.to(self.tokens.device)
        return self.tokens[self.length - 1 : self.length + n]

    def prefilled(self, hidden_states: torch.Tensor) -> None:
        """Hand a hidden-state drafter the prefill's ``[prompt_len - 1, layers, hidden]``."""
        cast(HiddenStateDrafter, self.drafter).observe_hidden_states(hidden_states)

    def commit(
        self,
        logits: torch.Tensor,
        block: DraftBlock,
        verify_s: float | None = None,
        *,
        hidden_states: torch.Tensor | None = None,
    ) -> None:
        """Verify ``block`` against the target's ``logits`` [len(block) + 1, vocab], keep what passes, emit it.

        ``hidden_states`` [len(block) + 1, layers, hidden]: the verify pass's, for a hidden-state
        drafter; the rows of the kept positions reach it before ``update``.
        """
        draft_ids = block.token_ids.to(self.tokens.device)
        n_draft = int(draft_ids.shape[0])
        history = self.tokens[: self.length + n_draft]
        if self.shaper.do_sample:
            target_probs = self.shaper.probs(history, logits)
            result = speculative_sample(target_probs, draft_ids, block.draft_probs, self.generator)
        else:
            result = greedy_verify(self.shaper.scores(history, logits), draft_ids)
        accepted, finish = self._cut(result.token_ids, self.max_new - self.new_tokens)
        num_accepted = min(result.num_accepted, len(accepted))
        self.tokens[self.length : self.length + len(accepted)] = torch.tensor(accepted, device=self.tokens.device)
        self.length += len(accepted)
        # A block cut short by EOS, a stop rule or the budget lost its tail, but no draft was rejected there.
        rejected = result.num_accepted < n_draft
        self.stats.record_step(n_draft, num_accepted, rejected=rejected)
        self.stats.new_tokens = self.new_tokens
        if hidden_states is not None:
            # the kept positions: the newest committed token's before this step and the accepted drafts'
            cast(HiddenStateDrafter, self.drafter).observe_hidden_states(hidden_states[: len(accepted)])
        self.drafter.update(accepted, num_accepted)
        done_at = time.perf_counter()
        if verify_s is None:
            verify_s = done_at - self._drafted_at
        self.policy.observe(n_draft, num_accepted, self._drafted_at - self._plan_started, verify_s, rejected=rejected)
        if accepted:
            self.emitter.block(VerifiedBlock(self.step, self.row, tuple(accepted), n_draft, num_accepted))
        self.step += 1
        self.finish = finish

    def _cut(self, token_ids: list[int], room: int) -> tuple[list[int], FinishReason | None]:
        """Trim a verified block at EOS, a stopping criterion or the token budget."""
        token_ids = token_ids[:room]
        for i, token in enumerate(token_ids):
            if token in self.params.eos_token_ids:
                return token_ids[: i + 1], "eos"
            if self.stopping is not None:
                end = self.length + i + 1
                self.tokens[self.length + i] = token
                if bool(self.stopping(self.tokens[:end].unsqueeze(0), None).any()):
                    return token_ids[: i + 1], "stop"
        return token_ids, None


