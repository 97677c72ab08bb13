"""One subscriber's cursor into a stream's :class:`~specdec.streaming._log.EventLog`, with its overflow policy.

A subscription owns no queue: it replays ``log.history`` from its start, then
reads ``log.entries`` from the length the log had when it subscribed (both
taken in one loop callback, so nothing is missed or duplicated), and waits on a
future of its own (``log.waiter()``) only when it has caught up. It depends on
the log alone, never on the stream or the hub.

Overflow policies (``max_queue`` bounds the live events waiting for this
subscriber, checked whenever it reads; events a held-back fan-out round
delivers at once do not count, only what it left unread of earlier rounds:
``log.overdue``):

``"merge"`` (default)
    Drop every waiting provisional event; if more than ``max_queue`` still
    wait, merge each run of consecutive commits into one (token ids and texts
    concatenated, ``drafted``/``accepted`` summed, ``seq``/``step``/
    ``n_committed``/``ts`` of the newest). No token or text is lost; if that is
    still too many, the subscriber is closed as under ``"close"``.
``"close"``
    The waiting events are discarded and the subscriber receives
    ``ErrorEvent(code="slow_consumer", retryable=True, seq=-1)`` and then stops.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Literal

from specdec import InvalidArgumentError

from ._log import EventLog
from .events import CommitEvent, ErrorEvent, Event, ProvisionalEvent

__all__ = ["Subscription", "OverflowPolicy", "check_max_queue", "check_policy"]

OverflowPolicy = Literal["merge", "close"]
POLICIES = ("merge", "close")


def check_max_queue(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"max_queue must be an int >= 1, got {value!r}")
    return value


def check_policy(value: Any) -> OverflowPolicy:
    if value not in POLICIES:
        raise InvalidArgumentError(f"overflow must be one of {POLICIES}, got {value!r}")
    return value


def merge_commits(first: CommitEvent, second: CommitEvent) -> CommitEvent:
    return CommitEvent(
        stream_id=second.stream_id,
        seq=second.seq,
        ts=second.ts,
        token_ids=list(first.token_ids) + list(second.token_ids),
        text=first.text + second.text,
        n_committed=second.n_committed,
        step=second.step,
        drafted=first.drafted + second.drafted,
        accepted=first.accepted + second.accepted,
    )


class Subscription:
    """One subscriber's view of a stream: an async iterator of events.

    Get one from :meth:`Stream.subscribe`. Iterate with ``async for``; leave
    with ``break`` (the subscription is dropped when it is garbage collected),
    with :meth:`aclose`, or use ``async with stream.subscribe() as sub``.
    ``last_seq`` is the ``seq`` of the last stream event handed out (``-1``
    before any), for resuming with ``subscribe(after_seq=sub.last_seq)``.
    Counters: ``dropped`` (provisionals dropped on overflow), ``merged``
    (commits folded into others on overflow).

    A subscription owns no queue of its own: it is a cursor into the stream's
    shared, append-only event log (see the module docstring), plus a short
    deque of the events that the overflow policy rewrote.
    """

    def __init__(self, log: EventLog, stream_id: str, start: int, maxsize: int, overflow: OverflowPolicy) -> None:
        self._events = log
        self._stream_id = stream_id
        self._history = log.history  # replay: stored events [start, hist_end)
        self._pos = start
        self._hist_end = len(log.history)
        self._log = log.entries  # live: every event from the cursor on
        self._cursor = len(log.entries)
        self._set_aside: collections.deque[Event] = collections.deque()  # rewritten by the overflow policy
        self._maxsize = maxsize
        self._overflow = overflow
        self._closed = False  # left, or closed as a slow consumer
        self._plain = start >= self._hist_end  # the fast path: only the shared log left to read
        self._waiter: asyncio.Future[None] | None = None
        self._detached = False
        self.last_seq = -1
        self.dropped = 0
        self.merged = 0

    # -- consumer side ----------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._plain:  # replay done, nothing set aside, not closed: read the shared log
                log = self._log
                cursor = self._cursor
                waiting = len(log) - cursor
                if waiting:
                    # Only events of earlier wake-up rounds count against max_queue: a round the fan-out
                    # budget held back arrives all at once, and that is the hub's delay, not ours.
                    if self._events.overdue - cursor <= self._maxsize:
                        event = log[cursor]
                        self._cursor = cursor + 1
                        self.last_seq = event.seq
                        return event
                    self._apply_overflow_policy()
                    continue
                events = self._events
                if events.ended:  # the log is complete and read to its end
                    self._closed, self._plain = True, False
                    self._detach()
                    raise StopAsyncIteration
                # Wait for the next batch. Whoever wakes us appended at least one event or closed us.
                waiter = events.waiter()
                self._waiter = waiter
                try:
                    await waiter
                finally:
                    self._waiter = None
                    if waiter.cancelled():  # the consumer was cancelled: do not leave its future behind
                        events.forget(waiter)
            else:
                special = self._next_special()
                if special is not None:
                    return special

    def _next_special(self) -> Event | None:
        """The next event from the replay or the set-aside events; ``None`` once back to reading the log."""
        while True:
            if self._pos < self._hist_end:
                event = self._history[self._pos]
                self._pos += 1
                self.last_seq = event.seq
                return event
            if self._closed:
                if self._set_aside:
                    event = self._set_aside.popleft()
                    if event.seq >= 0:  # not our own slow_consumer notice
                        self.last_seq = event.seq
                    return event
                self._detach()
                raise StopAsyncIteration
            if len(self._set_aside) + max(0, self._events.overdue - self._cursor) > self._maxsize:
                self._apply_overflow_policy()
                continue
            if self._set_aside:
                event = self._set_aside.popleft()
                self.last_seq = event.seq
                return event
            self._plain = True
            return None

    async def aclose(self) -> None:
        """Stop receiving events; the iterator ends. Safe to call more than once."""
        self._closed, self._plain = True, False
        self._set_aside.clear()
        self._pos = self._hist_end
        self._detach()
        self._wake()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once no more events will arrive (some may still be waiting to be read)."""
        return self._closed or self._events.ended

    def qsize(self) -> int:
        """Live events waiting for this subscriber (replayed history not counted).

        Between reads this may exceed ``max_queue``: the overflow policy is
        applied when the subscriber next reads, to everything waiting then.
        """
        if self._closed:
            return len(self._set_aside)
        return len(self._set_aside) + len(self._log) - self._cursor

    # -- internals (event loop only) -------------------------------------------------

    @property
    def attached(self) -> bool:
        """True while the subscriber still reads live events (not left, not closed, stream not ended and read)."""
        return not self._detached

    def _detach(self) -> None:
        self._detached = True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _apply_overflow_policy(self) -> None:
        """More than ``max_queue`` live events wait: take them out of the log and apply the policy."""
        backlog = list(self._set_aside)
        backlog.extend(self._log[self._cursor :])
        self._cursor = len(self._log)
        self._set_aside.clear()
        self._plain = False
        waiting, newest_seq = len(backlog), backlog[-1].seq
        if self._overflow == "merge":
            kept: list[Event] = [e for e in backlog if not isinstance(e, ProvisionalEvent)]
            self.dropped += len(backlog) - len(kept)
            if len(kept) > self._maxsize:
                merged: list[Event] = []
                for e in kept:
                    if isinstance(e, CommitEvent) and merged and isinstance(merged[-1], CommitEvent):
                        merged[-1] = merge_commits(merged[-1], e)
                        self.merged += 1
                    else:
                        merged.append(e)
                kept = merged
            if len(kept) <= self._maxsize:
                self._set_aside.extend(kept)
                return
        self._set_aside.append(
            ErrorEvent(
                stream_id=self._stream_id,
                seq=-1,
                code="slow_consumer",
                message=(
                    f"subscriber fell behind ({waiting} events waiting, limit {self._maxsize}, "
                    f"policy {self._overflow!r}) at seq {newest_seq}; resume with subscribe(after_seq={self.last_seq})"
                ),
                retryable=True,
            )
        )
        self._closed = True
        self._detach()
