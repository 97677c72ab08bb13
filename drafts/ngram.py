"""Prompt lookup: draft by copying what followed an earlier occurrence of the context's suffix."""

from __future__ import annotations

import copy

import torch

from specdec import DraftBlock, DraftContext, InvalidArgumentError

__all__ = ["NGramDrafter"]

_OCCURRENCES = ("first", "recent")


class NGramDrafter:
    """Draft tokens by n-gram lookup over the prompt and everything generated so far.

    At each step it takes the longest suffix of the sequence (from ``max_ngram``
    down to ``min_ngram`` tokens) that occurred before, and proposes the tokens
    that followed one earlier occurrence of it: the first one by default
    (``occurrence="first"``, usually inside the prompt, whose text grounded
    answers copy), or the latest one (``occurrence="recent"``, better when the
    output repeats itself rather than its input).

    The index maps each n-gram to the position right after its chosen
    occurrence and grows with every verified token, so a step costs
    O(max_ngram) whatever the context length.

    Defaults come from replaying SmolLM2-135M-Instruct's greedy answers on the
    benchmark prompts (``benchmarks/bench_ngram.py``): one-token matches are
    wrong too often to pay for a verify pass (``min_ngram=2``), and copies run
    long enough that drafting up to 16 tokens beats 8 or 10.

    Example: context ``[1, 2, 3, 4, 1, 2]`` with ``max_ngram=2`` matches the
    suffix ``[1, 2]`` at positions 0-1 and proposes ``[3, 4, 1, 2]`` (up to k).
    """

    vocab_size: int | None = None

    def __init__(
        self,
        *,
        num_draft_tokens: int = 16,
        max_ngram: int = 4,
        min_ngram: int = 2,
        occurrence: str = "first",
    ) -> None:
        for name, value in (("num_draft_tokens", num_draft_tokens), ("max_ngram", max_ngram), ("min_ngram", min_ngram)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}")
        if min_ngram > max_ngram:
            raise InvalidArgumentError(f"min_ngram ({min_ngram}) must not exceed max_ngram ({max_ngram})")
        if occurrence not in _OCCURRENCES:
            raise InvalidArgumentError(f"occurrence must be one of {_OCCURRENCES}, got {occurrence!r}")
        self.default_num_draft_tokens = num_draft_tokens
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.occurrence = occurrence
        self._tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}

    def for_row(self) -> NGramDrafter:
        """A copy with the same settings and its own (empty) index, for another row of a batch."""
        clone = copy.copy(self)
        clone._tokens = []
        clone._index = {}
        return clone

    def begin(self, context: DraftContext) -> None:
        self._tokens = []
        self._index = {}
        self._extend(context.prompt_ids.tolist())

    def _extend(self, token_ids: list[int]) -> None:
        tokens, index = self._tokens, self._index
        keep_first = self.occurrence == "first"
        for token in token_ids:
            end = len(tokens)  # the n-grams ending just before `token` are now followed by it
            for n in range(self.min_ngram, min(self.max_ngram, end) + 1):
                key = tuple(tokens[end - n : end])
                if keep_first:
                    index.setdefault(key, end)
                else:
                    index[key] = end
            tokens.append(token)

    def lookup(self, max_tokens: int) -> list[int]:
        """The proposal for the current sequence, as a list (empty when nothing matches)."""
        return self.match(max_tokens)[1]

    def match(self, max_tokens: int) -> tuple[int, list[int]]:
        """``(n, proposal)``: the length of the matched suffix and what followed it (``(0, [])`` when none).

        A composite drafter reads ``n`` as the strength of the evidence: a longer matched suffix
        is copied more reliably.
        """
        tokens = self._tokens
        for n in range(min(self.max_ngram, len(tokens)), self.min_ngram - 1, -1):
            start = self._index.get(tuple(tokens[len(tokens) - n :]))
            if start is not None:
                proposal = tokens[start : start + max_tokens]
                return (n, proposal) if proposal else (0, [])
        return 0, []

    def propose(self, max_tokens: int) -> DraftBlock:
        return DraftBlock(torch.tensor(self.lookup(max_tokens), dtype=torch.long))

    def update(self, token_ids: list[int], num_accepted: int) -> None:
        self._extend(token_ids)

    def end(self) -> None:
        self._tokens = []
        self._index = {}
