"""Choosing the draft length k on the fly from a cost model (``num_draft_tokens="auto"``).

Glossary
--------
alpha
    The probability that the target accepts a draft token, given that it
    accepted the ones before it (Leviathan et al. 2023 treat it as i.i.d.).
expected tokens
    With ``k`` draft tokens one verify pass yields
    ``E(alpha, k) = (1 - alpha**(k + 1)) / (1 - alpha)`` tokens on average: the
    accepted prefix plus the target's own (recovered or bonus) token.
c
    The cost of drafting one token, in units of one plain target step.
v(k)
    The cost of one verify pass over ``k + 1`` positions, in the same unit
    (1 in the paper's model; more on a CPU, where the pass is compute-bound).

The controller picks, before every step, the ``k`` that maximises expected
tokens per second ``E(alpha, k) / (k * c + v(k))``. Both sides are learned:

- alpha per request, from the verified outcomes, starting from a Beta prior
  whose mean is the long-run acceptance of earlier requests on the same
  generator (and a neutral guess before any);
- the costs per (model pair, device): a :class:`CostProfile` lives on the
  :class:`~specdec.SpeculativeGenerator` and survives across requests. It keeps,
  in seconds, the draft time per token and the step time per number of scored
  positions, each the median of its recent samples; unseen lengths are
  interpolated, or extrapolated with the slope of the seen ones.

Timing uses ``time.perf_counter`` only; the controller adds no device sync.
On CUDA a drafter's kernels may still be running when ``propose`` returns, so
their time lands in the verify part of the step (whose result the loop reads
back to the host anyway). The controller only ever uses the sum
``k * draft + verify(k + 1)``, so the split does not matter, only that each
step's total is measured between two host syncs.

Worked example: alpha = 0.8, c = 0.05 and v(k) = 1 + 0.1 k give
``E / cost`` = 1.57, 1.88, 2.04, 2.10, 2.11, 2.08 for k = 1..6, so k = 5.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "AcceptanceEstimate",
    "AdaptiveDraftLength",
    "CostProfile",
    "best_draft_length",
    "expected_tokens",
    "ideal_speedup",
]


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens per verify pass with ``k`` draft tokens: ``(1 - alpha**(k+1)) / (1 - alpha)``."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    alpha = min(max(float(alpha), 0.0), 1.0)
    if alpha >= 1.0 - 1e-12:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def ideal_speedup(alpha: float, k: int, c: float, v: float = 1.0) -> float:
    """Leviathan et al.'s ceiling ``E(alpha, k) / (k * c + v)`` over decoding with the target alone.

    ``c``: draft cost per token and ``v``: verify cost of ``k + 1`` positions,
    both relative to one target step.
    """
    return expected_tokens(alpha, k) / (k * c + v)


def best_draft_length(alpha: float, step_cost, k_min: int, k_max: int) -> int:
    """The ``k`` in ``[k_min, k_max]`` maximising ``expected_tokens(alpha, k) / step_cost(k)``.

    ``step_cost(k)``: the cost of a step with ``k`` draft tokens (any unit).
    Ties go to the smaller ``k``.
    """
    best_k, best_rate = k_min, -math.inf
    for k in range(k_min, k_max + 1):
        cost = step_cost(k)
        rate = expected_tokens(alpha, k) / cost if cost > 0 else math.inf
        if rate > best_rate * (1.0 + 1e-9):
            best_k, best_rate = k, rate
    return best_k


@dataclass
class AcceptanceEstimate:
    """Online estimate of alpha from verified blocks, with a Beta prior.

    A step that drafted ``n`` tokens and kept ``m`` shows ``m`` acceptances and,
    when ``m < n``, one rejection (the positions after it are never tested).
    Older evidence fades by ``forget`` per step so the estimate follows a
    request whose acceptance drifts (copying a passage, then free text).
    """

    prior_mean: float = 0.6
    prior_strength: float = 4.0  # pseudo-observations
    forget: float = 0.98
    accepted: float = 0.0
    rejected: float = 0.0
    total_accepted: int = 0
    total_rejected: int = 0

    def observe(self, num_drafted: int, num_accepted: int, *, rejected: bool | None = None) -> None:
        """One step's outcome; ``rejected`` defaults to ``num_accepted < num_drafted``.

        See :meth:`SpecStats.record_step`.
        """
        if rejected is None:
            rejected = num_accepted < num_drafted
        rejected = rejected and num_drafted > 0
        # Every step fades the evidence, a step without drafts too: once the controller stops drafting,
        # alpha drifts back to its prior, and drafting is tried again if the prior says it may pay.
        self.accepted = self.accepted * self.forget + num_accepted
        self.rejected = self.rejected * self.forget + (1.0 if rejected else 0.0)
        # The request's own evidence, unfaded: what it tells the next request (see AdaptiveDraftLength.finish).
        self.total_accepted += num_accepted
        self.total_rejected += int(rejected)

    @property
    def request_alpha(self) -> float | None:
        """This request's acceptance from all its evidence, no prior and no fading (``None`` without evidence)."""
        seen = self.total_accepted + self.total_rejected
        return self.total_accepted / seen if seen else None

    @property
    def alpha(self) -> float:
        a = self.prior_mean * self.prior_strength + self.accepted
        b = (1.0 - self.prior_mean) * self.prior_strength + self.rejected
        return a / (a + b)


@dataclass
class CostProfile:
    """Measured costs of one (target, drafter, device) combination, in seconds.

    ``draft_s``: draft time per proposed token. ``step_s[n]``: the rest of a
    step (verify pass over ``n`` positions, acceptance, rollback, bookkeeping)
    when ``n - 1`` tokens were drafted. Each is the median of the last
    ``window`` samples: on a shared machine a step slowed by another process
    moves a median not at all, while a lasting change of speed takes over once
    it fills half the window. (An average would let one such step price a
    length out of use, and the controller would then never re-measure it.)
    """

    window: int = 15
    #: Extra verify cost per scored position, relative to one position, assumed until two lengths are seen.
    prior_verify_slope: float = 0.05
    draft_s: float | None = None
    draft_samples: deque[float] = field(default_factory=deque)
    step_samples: dict[int, deque[float]] = field(default_factory=dict)
    step_count: dict[int, int] = field(default_factory=dict)
    step_s: dict[int, float] = field(default_factory=dict)
    alpha_sum: float = 0.0  # acceptance over past requests, for the next request's prior
    alpha_requests: int = 0
    #: The longest draft worth pricing, when the runner knows it (the static path: its widest verify width - 1).
    k_max: int | None = None
    #: Profiles of passes shared by more rows, by class (2, 4, 8, ...: see :meth:`for_rows`).
    shared: dict[int, CostProfile] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        self.draft_samples = deque(self.draft_samples, maxlen=self.window)

    def observe(self, num_drafted: int, draft_s: float, verify_s: float) -> None:
        self.observe_draft(num_drafted, draft_s)
        self.observe_verify(num_drafted, verify_s)

    def observe_draft(self, num_drafted: int, draft_s: float) -> None:
        """The time spent proposing ``num_drafted`` tokens (ignored when nothing was drafted)."""
        if num_drafted > 0 and draft_s >= 0.0:
            self.draft_samples.append(draft_s / num_drafted)
            self.draft_s = statistics.median(self.draft_samples)

    def observe_verify(self, num_drafted: int, verify_s: float) -> None:
        """The rest of a step that verified ``num_drafted`` drafts (a pass over ``num_drafted + 1`` positions).

        A drafter choosing among several sources keeps one profile of verify times for the target
        and one of draft times per source (:class:`specdec.drafts.CompositeDrafter`).
        """
        n = num_drafted + 1
        self.step_count[n] = self.step_count.get(n, 0) + 1
        samples = self.step_samples.setdefault(n, deque(maxlen=self.window))
        samples.append(verify_s)
        self.step_s[n] = statistics.median(samples)

    def prime(self, step_s: dict[int, float]) -> None:
        """Start from step times measured ahead of any request: ``step_s[n]``, seconds over ``n`` positions.

        The static path times each of its widths when it is built. Each time is
        one sample; the steps that run add theirs and take over the median.
        """
        for n, seconds in step_s.items():
            if n < 1 or not seconds > 0:
                raise ValueError(f"step_s needs n >= 1 and seconds > 0, got {n}: {seconds}")
            samples = self.step_samples.setdefault(n, deque(maxlen=self.window))
            samples.append(seconds)
            self.step_s[n] = statistics.median(samples)

    def for_rows(self, rows: int) -> CostProfile:
        """The profile of passes that ``rows`` decoding rows share: this one for one row, else one per class.

        A pass shared by many rows costs what all of them bring, and on a CPU it is compute-bound where a
        one-row pass is not: timed together, 16-row passes taught one-row requests that drafting does not
        pay (after a batched run, 4 grounded requests one at a time took 34 s instead of 14 s,
        docs/bench_batched_epyc.md). Classes are powers of two (2-3 rows, 4-7, 8-15, ...); acceptance
        (:meth:`record_request`) stays in this profile, since it belongs to the prompts, not the batch.
        """
        if rows <= 1:
            return self
        size = 1 << (int(rows).bit_length() - 1)
        if size not in self.shared:
            fresh = CostProfile(window=self.window, prior_verify_slope=self.prior_verify_slope, k_max=self.k_max)
            # Start from the nearest class measured so far (one sample per length, which the class's own
            # samples outvote within a few steps), not from nothing: rows finishing one after another walk
            # a batch down through every class, and an unmeasured class drafts the default k.
            known = {c: p for c, p in self.shared.items() if p.measured}
            if self.measured:
                known[1] = self
            if known:
                nearest = known[min(known, key=lambda c: (abs(c.bit_length() - size.bit_length()), -c))]
                fresh.prime(dict(nearest.step_s))
                if nearest.draft_s is not None:
                    fresh.observe_draft(1, nearest.draft_s)
            self.shared[size] = fresh
        return self.shared[size]

    @property
    def measured(self) -> bool:
        return bool(self.step_s)

    def verify_s(self, n: int) -> float:
        """Estimated verify-and-accept time over ``n`` positions (``n >= 1``)."""
        if n in self.step_s:
            return self.step_s[n]
        known = sorted(self.step_s)
        if not known:
            raise ValueError("no step has been measured yet")
        below = [m for m in known if m < n]
        above = [m for m in known if m > n]
        if below and above:
            lo, hi = below[-1], above[0]
            t = (n - lo) / (hi - lo)
            return self.step_s[lo] + t * (self.step_s[hi] - self.step_s[lo])
        if len(known) >= 2:
            lo, hi = known[0], known[-1]
            slope = max((self.step_s[hi] - self.step_s[lo]) / (hi - lo), 0.0)
        else:
            slope = self.prior_verify_slope * self.step_s[known[0]]
        edge = below[-1] if below else above[0]
        return max(self.step_s[edge] + slope * (n - edge), 1e-9)

    def step_cost(self, k: int) -> float:
        """Estimated seconds of a step with ``k`` draft tokens."""
        return k * (self.draft_s or 0.0) + self.verify_s(k + 1)

    def c(self) -> float | None:
        """Draft cost per token relative to a step with no drafts (``None`` until measured)."""
        if self.draft_s is None or not self.step_s:
            return None
        return self.draft_s / self.verify_s(1)

    def v(self, k: int) -> float | None:
        """Cost of a verify pass with ``k`` drafts relative to a step with none."""
        if not self.step_s:
            return None
        return self.verify_s(k + 1) / self.verify_s(1)

    def record_request(self, alpha: float) -> None:
        self.alpha_sum += alpha
        self.alpha_requests += 1

    @property
    def alpha_prior(self) -> float | None:
        return self.alpha_sum / self.alpha_requests if self.alpha_requests else None


class AdaptiveDraftLength:
    """Picks ``k`` before each step of one request; learns from each step's outcome.

    Usage (the generator's loop)::

        k = controller.choose()
        ... propose (draft_s), verify and accept (verify_s) ...
        controller.observe(num_drafted, num_accepted, draft_s, verify_s)
        controller.finish()   # at the end of the request

    ``k = 0`` (no draft, a plain target step) is allowed: a drafter that is
    mostly wrong and costs more than it saves gets switched off, and the
    exploration below (and alpha drifting back to its prior as old evidence
    fades) switches it on again to check.

    Before anything is measured it uses ``default_k``. Every ``explore_every``
    steps it tries a neighbour of the best ``k`` (alternately one below and one
    above) until that neighbour has ``explore_samples`` measurements, so the
    profile learns the local slope of the cost curve and then stops paying for it.

    It is a :class:`~specdec.policy.DraftLengthPolicy`: pass one as
    ``num_draft_tokens`` (``"auto"`` is the shorthand for one built on the
    generator's own :class:`CostProfile`).
    """

    #: A drafter may stop before ``k`` when unsure (see :class:`~specdec.DraftContext`).
    adaptive = True

    def __init__(
        self,
        profile: CostProfile,
        *,
        default_k: int,
        k_min: int = 0,
        k_max: int | None = None,
        explore_every: int = 8,
        explore_samples: int = 12,
        prior_mean: float = 0.6,
        prior_strength: float = 4.0,
        forget: float = 0.98,
    ) -> None:
        if k_min < 0:
            raise ValueError(f"k_min must be >= 0, got {k_min}")
        self.profile = profile
        self.k_min = k_min
        if k_max is None:
            k_max = profile.k_max if profile.k_max is not None else max(8, 2 * default_k)
        self.k_max = max(k_max, k_min, 1)
        self.default_k = min(max(default_k, k_min), self.k_max)
        self.explore_every = explore_every
        self.explore_samples = explore_samples
        mean = profile.alpha_prior if profile.alpha_prior is not None else prior_mean
        self.acceptance = AcceptanceEstimate(prior_mean=mean, prior_strength=prior_strength, forget=forget)
        self.steps = 0
        self.chosen: list[int] = []  # k chosen at each step, for inspection
        self.costs = profile  # the profile of the class of passes the next step runs in (see share)

    @property
    def alpha(self) -> float:
        return self.acceptance.alpha

    def share(self, rows: int) -> None:
        """The next step's pass is shared by ``rows`` decoding rows: price it, and learn from it, as such."""
        self.costs = self.profile.for_rows(rows)

    def best_k(self) -> int:
        if not self.costs.measured:
            return self.default_k
        return best_draft_length(self.alpha, self.costs.step_cost, self.k_min, self.k_max)

    def choose(self) -> int:
        k = self.best_k()
        if (
            self.costs.measured
            and self.explore_every > 0
            and self.steps % self.explore_every == self.explore_every - 1
        ):
            direction = -1 if (self.steps // self.explore_every) % 2 == 0 else 1
            neighbour = k + direction
            if not self.k_min <= neighbour <= self.k_max:
                neighbour = k - direction
            # Explore only while the neighbour's cost is poorly known: a learned profile costs nothing.
            if (
                self.k_min <= neighbour <= self.k_max
                and self.costs.step_count.get(neighbour + 1, 0) < self.explore_samples
            ):
                k = neighbour
        self.chosen.append(k)
        return k

    def observe(
        self, num_drafted: int, num_accepted: int, draft_s: float, verify_s: float, *, rejected: bool | None = None
    ) -> None:
        self.steps += 1
        self.acceptance.observe(num_drafted, num_accepted, rejected=rejected)
        self.costs.observe(num_drafted, draft_s, verify_s)

    def finish(self) -> None:
        # The request's own acceptance, not the faded estimate: after a stretch without drafting, that one
        # has drifted back towards the prior and would teach the next request little.
        alpha = self.acceptance.request_alpha
        if alpha is not None:
            self.profile.record_request(alpha)
