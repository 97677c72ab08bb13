"""Draft-length policies: who picks ``k`` before each step.

The loop never looks at how ``k`` is chosen. It holds one policy object per
request and calls, every step::

    k = policy.choose()                      # 0..policy.k_max
    ... propose (draft_s), verify and commit (verify_s) ...
    policy.observe(num_drafted, num_accepted, draft_s, verify_s, rejected=...)

and ``policy.finish()`` once the request is done. A policy may also have
``share(rows)``: the loop calls it before ``choose()`` with the number of
decoding rows that share the step's pass (:class:`~specdec.adaptive.AdaptiveDraftLength`
prices many-row passes apart from one-row ones). Two policies exist:
:class:`FixedDraftLength` (always the same ``k``) and
:class:`~specdec.adaptive.AdaptiveDraftLength` (a cost model, see
:mod:`specdec.adaptive`). :func:`draft_length_policy` is the one place that
turns the ``num_draft_tokens`` argument (an int, ``None``, the shorthand
``"auto"`` or a policy object) into a policy.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .adaptive import AdaptiveDraftLength, CostProfile
from .errors import InvalidArgumentError

__all__ = ["DraftLengthPolicy", "FixedDraftLength", "draft_length_policy"]


@runtime_checkable
class DraftLengthPolicy(Protocol):
    """Chooses the number of draft tokens before each step of one request."""

    #: The largest ``k`` :meth:`choose` may return.
    k_max: int
    #: True when the policy adapts ``k`` itself: a drafter may then stop before ``k`` when unsure.
    adaptive: bool

    def choose(self) -> int: ...

    def observe(
        self, num_drafted: int, num_accepted: int, draft_s: float, verify_s: float, *, rejected: bool | None = None
    ) -> None: ...

    def finish(self) -> None: ...


class FixedDraftLength:
    """Always ``k`` draft tokens (the loop trims it to the token budget)."""

    adaptive = False

    def __init__(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidArgumentError(f"num_draft_tokens must be an integer >= 1, got {k!r}")
        self.k_max = k

    def choose(self) -> int:
        return self.k_max

    def observe(
        self, num_drafted: int, num_accepted: int, draft_s: float, verify_s: float, *, rejected: bool | None = None
    ) -> None:
        pass

    def finish(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"FixedDraftLength({self.k_max})"


def is_policy(value: Any) -> bool:
    """Whether ``value`` is a ready-made policy object (rather than an int, None or "auto")."""
    return all(callable(getattr(value, name, None)) for name in ("choose", "observe", "finish")) and isinstance(
        getattr(value, "k_max", None), int
    )


def draft_length_policy(
    num_draft_tokens: Any, *, default_k: int, costs: CostProfile, sampled: bool = False
) -> DraftLengthPolicy:
    """The policy for one request.

    ``None`` (the default): a greedy request adapts ``k`` as ``"auto"`` does; a
    sampled one drafts the drafter's default ``k``, fixed. Greedy output is the
    target's whatever ``k`` is, and a ``k`` fitted to the measured costs wins
    where passes are compute-bound (many rows on a CPU: docs/bench_batched.md);
    a sampled row's random draws follow its ``k``, and a fixed ``k`` keeps its
    output independent of whatever shares its passes (the adaptive ``k`` follows
    costs measured across rows). An int: that ``k``, fixed. ``"auto"``: an
    :class:`AdaptiveDraftLength` learning from ``costs`` (the generator's
    measured profile, shared across requests). A policy object is used as
    given (it must not be shared by two running requests).
    """
    if num_draft_tokens is None:
        return FixedDraftLength(default_k) if sampled else AdaptiveDraftLength(costs, default_k=default_k)
    if num_draft_tokens == "auto":
        return AdaptiveDraftLength(costs, default_k=default_k)
    if is_policy(num_draft_tokens):
        return num_draft_tokens
    return FixedDraftLength(num_draft_tokens)
