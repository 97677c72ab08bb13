"""``CompositeDrafter``: per step, prompt lookup when a match pays, a head when it pays, otherwise nothing.

Glossary
--------
source
    Where a step's draft comes from: ``"lookup"`` (n-gram prompt lookup, copying what followed an
    earlier occurrence of the context's suffix), ``"head"`` (any other drafter: an EAGLE head, a
    small model) or ``"none"`` (an empty block: the step is a plain target step).
match length
    The length ``n`` of the suffix the lookup matched (2..4 by default). Copies after a longer
    match are accepted more often, so each ``n`` has its own acceptance estimate.
rate
    Expected tokens per second of a step: ``expected_tokens(alpha, k) / (k * draft_s + verify_s(k + 1))``
    (:mod:`specdec.adaptive`); ``"none"`` has rate ``1 / verify_s(1)``.

Before each step :class:`CostChooser` takes, for each source that can propose, the ``k`` that
maximises its rate (with that source's acceptance estimate and draft cost) and picks the source
with the highest rate, ``"none"`` included. So a source that does not pay for itself on this
machine (a head that costs more than it saves, a lookup whose copies are rejected) is switched
off, and with no source paying the composite proposes nothing: no prompt runs slower than the
target alone, beyond the occasional probe (estimates drift back towards their prior while a
source is off, as in :class:`~specdec.AdaptiveDraftLength`).

Costs are measured by the composite itself: the draft time is the time inside the source's
``propose``; the verify time is the time from the end of ``propose`` to the ``update`` that
reports the outcome (the target's verify pass, acceptance and rollback). The target's verify
times per block length are one :class:`~specdec.CostProfile` shared by all sources; each source
has its own draft cost. :class:`SourceCosts` holds them and is shared by every row and request
of one composite (one target on one machine), like the generator's own profile.

Exactness: each block comes from one source with that source's own ``draft_probs`` (``None``
for the lookup, a deterministic proposal), and the choice depends only on the past, so greedy
output is the target's own and speculative sampling stays lossless.

Both sources follow every verified token: ``update`` reaches the source that did not propose
with ``num_accepted=0`` (its drafts were not involved; every token came from elsewhere), and a
hidden-state head receives the target's hidden states every step, so when it is picked again it
catches up in one pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from specdec import (
    AcceptanceEstimate,
    CostProfile,
    DraftBlock,
    DraftContext,
    Drafter,
    InvalidArgumentError,
    best_draft_length,
    expected_tokens,
)

from .ngram import NGramDrafter

__all__ = ["Choice", "CompositeDrafter", "CostChooser", "PromptLookup", "SourceChooser", "SourceCosts"]

SOURCES = ("lookup", "head", "none")


class PromptLookup(Drafter, Protocol):
    """A drafter that can say how long a match backs its proposal (:meth:`NGramDrafter.match`)."""

    def match(self, max_tokens: int) -> tuple[int, list[int]]: ...


@dataclass(frozen=True)
class Choice:
    """One step's source and the number of tokens to ask it for (0 for ``"none"``)."""

    source: str  # "lookup", "head" or "none"
    num_tokens: int
    match_length: int = 0  # the lookup's matched suffix length (0 unless source == "lookup")

    @property
    def key(self) -> str:
        """The acceptance estimate this choice feeds: ``"lookup2"``.., ``"head"`` or ``"none"``."""
        return f"lookup{self.match_length}" if self.source == "lookup" else self.source


@dataclass
class SourceCosts:
    """Measured costs of one composite on one machine, shared by its rows and requests (seconds)."""

    window: int = 15
    verify: CostProfile = field(default_factory=CostProfile)  # the target's verify times, every step
    draft: dict[str, CostProfile] = field(default_factory=dict)  # per source: its draft time per token
    past_alpha: dict[str, tuple[float, int]] = field(default_factory=dict)  # per estimate: sum, requests

    def draft_profile(self, source: str) -> CostProfile:
        if source not in self.draft:
            self.draft[source] = CostProfile(window=self.window)
        return self.draft[source]

    def alpha_prior(self, key: str, default: float) -> float:
        """The prior mean of ``key``'s acceptance: past requests' mean, ``default`` counting as one request.

        Clamped to [0.05, 0.95]: a prior of 0 would never let the source be tried again.
        """
        total, count = self.past_alpha.get(key, (0.0, 0))
        return min(max((default + total) / (1 + count), 0.05), 0.95)

    def record_request(self, key: str, alpha: float) -> None:
        total, count = self.past_alpha.get(key, (0.0, 0))
        self.past_alpha[key] = (total + alpha, count + 1)


class SourceChooser(Protocol):
    """Picks each step's source; learns from each step's outcome (one object per row)."""

    def begin(self) -> None: ...

    def choose(self, max_tokens: int, match_length: int, match_tokens: int, head_tokens: int) -> Choice: ...

    def observe(
        self, choice: Choice | None, num_drafted: int, num_accepted: int, draft_s: float, verify_s: float
    ) -> None: ...

    def finish(self) -> None: ...

    def for_row(self) -> SourceChooser: ...


class CostChooser:
    """The default :class:`SourceChooser`: the source (or none) with the most expected tokens per second.

    ``prior_mean`` / ``prior_strength``: each acceptance estimate's Beta prior before any request
    has finished (a lookup after a longer match starts higher, see :meth:`default_prior`; afterwards
    the prior's mean moves to the acceptance of past requests, see :meth:`SourceCosts.alpha_prior`);
    ``forget``: how fast old evidence fades, per step. ``max_head_tokens`` caps a head's chain
    (acceptance falls with depth, which the i.i.d. model of :mod:`specdec.adaptive` does not see).

    Example, with a step costing 20 ms, a 5-token verify pass 22 ms, a head at 2 ms per token and
    alpha 0.7: the head's best k is 4 (2.77 tokens in 30 ms, 92 tokens/s against 50 alone).
    """

    def __init__(
        self,
        costs: SourceCosts | None = None,
        *,
        prior_mean: float = 0.5,
        prior_strength: float = 2.0,
        forget: float = 0.98,
        max_head_tokens: int = 8,
    ) -> None:
        if not 0.0 < prior_mean < 1.0 or prior_strength <= 0 or not 0.0 < forget <= 1.0:
            raise InvalidArgumentError("prior_mean must be in (0, 1), prior_strength > 0 and forget in (0, 1]")
        if isinstance(max_head_tokens, bool) or not isinstance(max_head_tokens, int) or max_head_tokens < 1:
            raise InvalidArgumentError(f"max_head_tokens must be an integer >= 1, got {max_head_tokens!r}")
        self.costs = costs if costs is not None else SourceCosts()
        self.prior_mean, self.prior_strength, self.forget = prior_mean, prior_strength, forget
        self.max_head_tokens = max_head_tokens
        self.estimates: dict[str, AcceptanceEstimate] = {}
        self.chosen: list[Choice] = []  # this request's choices, for inspection

    def for_row(self) -> CostChooser:
        """A chooser for another row: same settings and shared costs, its own acceptance estimates."""
        return CostChooser(self.costs, prior_mean=self.prior_mean, prior_strength=self.prior_strength,
                           forget=self.forget, max_head_tokens=self.max_head_tokens)  # fmt: skip

    def begin(self) -> None:
        self.estimates = {}
        self.chosen = []

    def default_prior(self, key: str) -> float:
        """``prior_mean`` for the head; for the lookup, more after a longer match (0.5 at n = 2, +0.1 per token)."""
        if key.startswith("lookup") and key.endswith("+"):
            return 0.8  # a copy that started right goes on
        if key.startswith("lookup"):
            n = int(key[len("lookup") :])
            return min(max(self.prior_mean + 0.1 * (n - 2), 0.05), 0.8)
        return self.prior_mean

    def estimate(self, key: str) -> AcceptanceEstimate:
        if key not in self.estimates:
            self.estimates[key] = AcceptanceEstimate(
                prior_mean=self.costs.alpha_prior(key, self.default_prior(key)),
                prior_strength=self.prior_strength,
                forget=self.forget,
            )
        return self.estimates[key]

    def step_cost(self, source: str, k: int) -> float:
        """Estimated seconds of a step drafting ``k`` tokens from ``source`` (an unmeasured draft is free)."""
        return k * (self.costs.draft_profile(source).draft_s or 0.0) + self.costs.verify.verify_s(k + 1)

    def rate(self, source: str, alpha: float, k: int) -> float:
        """Expected tokens per second of a step drafting ``k`` tokens from ``source``."""
        cost = self.step_cost(source, k)
        return expected_tokens(alpha, k) / cost if cost > 0 else math.inf

    def choose(self, max_tokens: int, match_length: int, match_tokens: int, head_tokens: int) -> Choice:
        """``match_tokens``: what the lookup offers (0: no match); ``head_tokens``: the head's default k (0: none)."""
        lookup_k = min(match_tokens, max_tokens)
        head_k = min(max_tokens, self.max_head_tokens)
        if not self.costs.verify.measured:  # nothing measured yet: try what is there
            if lookup_k:
                choice = Choice("lookup", lookup_k, match_length)
            else:
                choice = Choice("head", min(head_k, head_tokens)) if head_tokens else Choice("none", 0)
            self.chosen.append(choice)
            return choice
        options = [(1.0 / self.costs.verify.verify_s(1), Choice("none", 0))]
        if lookup_k:
            options.append(self._best(Choice("lookup", lookup_k, match_length)))
        if head_tokens and head_k:
            options.append(self._best(Choice("head", head_k)))
        # the highest rate; on a tie the earlier option (none before lookup before head: the cheaper)
        best = max(options, key=lambda option: option[0])
        choice = best[1]
        self.chosen.append(choice)
        return choice

    def _best(self, choice: Choice) -> tuple[float, Choice]:
        source = choice.source
        if source == "lookup":
            return self._best_copy(choice)
        alpha = self.estimate(choice.key).alpha
        k = best_draft_length(alpha, lambda k: self.step_cost(source, k), 1, choice.num_tokens)
        return self.rate(source, alpha, k), Choice(source, k, choice.match_length)

    def _best_copy(self, choice: Choice) -> tuple[float, Choice]:
        """A copy is all or nothing more than token by token: once its first token is right, the rest
        usually are. So the lookup has two estimates per match length: ``first`` (its first token is
        accepted) and ``rest`` (each later one, given the ones before), and a step of ``k`` copied
        tokens yields ``1 + first * expected_tokens(rest, k - 1)`` tokens."""
        first, rest = self.estimate(choice.key).alpha, self.estimate(choice.key + "+").alpha
        best_k, best_rate = 1, -math.inf
        for k in range(1, choice.num_tokens + 1):
            cost = self.step_cost("lookup", k)
            rate = (1.0 + first * expected_tokens(rest, k - 1)) / cost if cost > 0 else math.inf
            if rate > best_rate * (1.0 + 1e-9):
                best_k, best_rate = k, rate
        return best_rate, Choice("lookup", best_k, choice.match_length)

    def observe(
        self, choice: Choice | None, num_drafted: int, num_accepted: int, draft_s: float, verify_s: float
    ) -> None:
        """One step's outcome; ``choice=None``: the generator asked for nothing (no timing, estimates fade)."""
        used = choice.key if choice is not None and num_drafted > 0 else None
        for key, estimate in self.estimates.items():
            if key not in (used, f"{used}+"):
                estimate.observe(0, 0)  # every step fades the evidence of the sources not used
        if choice is None:
            return
        if used is not None:
            if choice.source == "lookup":
                self.estimate(used).observe(1, min(num_accepted, 1))
                if num_accepted >= 1 and num_drafted > 1:
                    self.estimate(used + "+").observe(num_drafted - 1, num_accepted - 1)
            else:
                self.estimate(used).observe(num_drafted, num_accepted)
            self.costs.draft_profile(choice.source).observe_draft(num_drafted, draft_s)
        self.costs.verify.observe_verify(num_drafted, verify_s)

    def finish(self) -> None:
        for key, estimate in self.estimates.items():
            alpha = estimate.request_alpha
            if alpha is not None:
                self.costs.record_request(key, alpha)


class CompositeDrafter:
    """Implements ``specdec.Drafter`` (and the hidden-state extension when its head does).

    Example::

        head = load_head("path/to/head", target)
        drafter = CompositeDrafter(NGramDrafter(), EagleDrafter(head))
        gen = SpeculativeGenerator(target, drafter)      # greedy: what target.generate gives

    ``lookup``: an :class:`NGramDrafter` (or anything with its ``match``); ``head``: any drafter,
    or ``None`` for lookup alone, switched off where it does not pay. ``chooser`` picks each step's
    source (default: a :class:`CostChooser`). ``num_draft_tokens`` is the default cap on a block
    (the generator's ``num_draft_tokens`` overrides it); the chooser picks each step's length below
    it, in either draft-length mode: choosing the length is what this drafter is for.
    """

    def __init__(
        self,
        lookup: PromptLookup | None = None,
        head: Drafter | None = None,
        *,
        chooser: SourceChooser | None = None,
        num_draft_tokens: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        lookup = lookup if lookup is not None else NGramDrafter()
        if not callable(getattr(lookup, "match", None)):
            raise InvalidArgumentError(
                f"lookup must offer match(max_tokens) like NGramDrafter, got {type(lookup).__name__}"
            )
        if head is not None and not callable(getattr(head, "propose", None)):
            raise InvalidArgumentError(f"head must be a drafter, got {type(head).__name__}")
        sources = [s for s in (lookup, head) if s is not None]
        if num_draft_tokens is None:
            num_draft_tokens = max(int(getattr(s, "default_num_draft_tokens", 1)) for s in sources)
        if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
            raise InvalidArgumentError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
        vocabs = {v for v in (getattr(s, "vocab_size", None) for s in sources) if v is not None}
        if len(vocabs) > 1:
            raise InvalidArgumentError(f"the sources' vocabularies differ: {sorted(vocabs)}")
        self.lookup = lookup
        self.head = head
        self.chooser: SourceChooser = chooser if chooser is not None else CostChooser()
        self.default_num_draft_tokens = num_draft_tokens
        self.vocab_size: int | None = vocabs.pop() if vocabs else None
        self.clock = clock
        layers = getattr(head, "target_layers", None)
        if layers is not None:
            self.target_layers: tuple[int, ...] = layers  # the generator hands the head its hidden states
        if all(callable(getattr(s, "for_row", None)) for s in sources):
            self.for_row = self._for_row  # DrafterPool forks rows only when every source can
        self._head_tokens = int(getattr(head, "default_num_draft_tokens", 0)) if head is not None else 0
        self._pending: tuple[Choice, int, float, float] | None = None  # choice, drafted, draft_s, proposed at
        self.counts = {source: 0 for source in SOURCES}  # steps per source over this drafter's life

    for_row: Callable[[], CompositeDrafter]

    def _for_row(self) -> CompositeDrafter:
        """Another row: the sources' own ``for_row`` copies, a chooser sharing this one's costs."""
        fork: Any = lambda source: source.for_row() if source is not None else None  # noqa: E731
        return CompositeDrafter(fork(self.lookup), fork(self.head), chooser=self.chooser.for_row(),
                                num_draft_tokens=self.default_num_draft_tokens, clock=self.clock)  # fmt: skip

    # ------------------------------------------------------------------ protocol

    def begin(self, context: DraftContext) -> None:
        self.lookup.begin(context)
        if self.head is not None:
            self.head.begin(context)
        self.chooser.begin()
        self._pending = None

    def observe_hidden_states(self, hidden_states: Any) -> None:
        """Forwarded to the head (present only when the head reads hidden states)."""
        self.head.observe_hidden_states(hidden_states)  # type: ignore[union-attr]

    def propose(self, max_tokens: int) -> DraftBlock:
        started = self.clock()
        match_length, match = self.lookup.match(max_tokens)
        choice = self.chooser.choose(max_tokens, match_length, len(match), self._head_tokens)
        if choice.source == "lookup":
            block = self.lookup.propose(choice.num_tokens)
        elif choice.source == "head" and self.head is not None:
            block = self.head.propose(choice.num_tokens)
        else:
            block = DraftBlock.empty()
        proposed = self.clock()
        self.counts[choice.source] += 1
        self._pending = (choice, len(block), proposed - started, proposed)
        return block

    def update(self, token_ids: list[int], num_accepted: int) -> None:
        verified = self.clock()
        pending, self._pending = self._pending, None
        source = pending[0].source if pending is not None else "none"
        self.lookup.update(token_ids, num_accepted if source == "lookup" else 0)
        if self.head is not None:
            self.head.update(token_ids, num_accepted if source == "head" else 0)
        if pending is None:
            self.chooser.observe(None, 0, 0, 0.0, 0.0)
            return
        choice, drafted, draft_s, proposed = pending
        self.chooser.observe(choice, drafted, min(num_accepted, drafted), draft_s, verified - proposed)

    def end(self) -> None:
        try:
            self.chooser.finish()
            self.lookup.end()
        finally:
            if self.head is not None:
                self.head.end()
        self._pending = None
