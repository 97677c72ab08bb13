"""The fan-out budget: when one stream wakes its waiting subscribers.

Without a budget (``share=None``, the default) every batch of new events is
released at once. With one (e.g. ``StreamHub(fanout_share=0.02,
fanout_max_delay_s=0.25)``, the setting ``docs/bench_streaming.md`` measured to
help at 1,000 subscribers), the budget measures the loop's CPU time for each
wake-up round (the wake-ups and the subscribers' first steps, in which they
read every event already logged) and starts the next round no sooner than
``cost / share`` after this one began, and never more than ``max_delay_s``
after; events that land in between wait in the log and go out together in the
next round. Events a held-back round delivers at once do not count against a
subscriber's ``max_queue`` (the log's ``overdue`` mark stays one round behind).

Every wake-up costs the loop a few microseconds per waiting subscriber, and in
CPython that time is taken from generation too whenever generation needs the
GIL; the budget trades latency (up to ``max_delay_s``) for generation speed.
It only amortizes the per-wake-up cost: each subscriber still spends its own
time on each event it reads.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from specdec import InvalidArgumentError

from ._log import EventLog

__all__ = ["FanoutBudget", "check_fanout"]


def check_fanout(share: Any, max_delay_s: Any) -> tuple[float | None, float]:
    """Validate ``(fanout_share, fanout_max_delay_s)``; ``InvalidArgumentError`` saying what to change."""
    if share is not None and (
        isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1
    ):
        raise InvalidArgumentError(f"fanout_share must be a number in (0, 1] or None, got {share!r}")
    if isinstance(max_delay_s, bool) or not isinstance(max_delay_s, (int, float)) or not (
        0 < max_delay_s < float("inf")
    ):
        raise InvalidArgumentError(f"fanout_max_delay_s must be a number of seconds > 0, got {max_delay_s!r}")
    return (None if share is None else float(share)), float(max_delay_s)


class FanoutBudget:
    """Decides when one stream's log releases its new events to the waiting readers (event loop only)."""

    def __init__(self, log: EventLog, *, share: float | None = None, max_delay_s: float = 0.05) -> None:
        self.share, self.max_delay_s = check_fanout(share, max_delay_s)
        self._log = log
        self._loop: asyncio.AbstractEventLoop = log.loop
        self._next_round_at = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._measuring = False
        self._wanted = False
        self.rounds = 0  # wake-up rounds run so far (with waiters)

    def request_round(self) -> None:
        """New events are in the log: wake the waiting readers now, or when the budget allows."""
        if self.share is None:
            self._log.mark_released()  # no budget: every event counts at once
            if self._log.wake():
                self.rounds += 1
        elif self._measuring:
            self._wanted = True  # decided once the running round's cost is known
        elif self._timer is None:
            delay = self._next_round_at - self._loop.time()
            if delay <= 0:
                self._round()
            else:
                self._timer = self._loop.call_later(delay, self._round)

    def _round(self) -> None:
        """Wake the waiting readers and measure what that costs the loop (their first steps included)."""
        self._timer = None
        self._log.mark_released(hold_overdue=True)
        if not self._log.has_waiters:
            return
        self._measuring = True
        self.rounds += 1
        started, cpu_started = self._loop.time(), time.thread_time()
        self._log.wake()
        # Runs after the woken readers' first steps, which read every event already in the log.
        self._loop.call_soon(self._round_done, started, cpu_started)

    def _round_done(self, started: float, cpu_started: float) -> None:
        self._measuring = False
        assert self.share is not None
        delay = min((time.thread_time() - cpu_started) / self.share, self.max_delay_s)
        self._next_round_at = started + delay
        if self._wanted:  # events arrived while the round was measured
            self._wanted = False
            self.request_round()
