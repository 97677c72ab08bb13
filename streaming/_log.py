"""The event log of one stream: the append-only record every reader of the stream shares.

It holds, on the event loop:

- ``entries``: every event, in ``seq`` order (provisionals included): what live readers read, each at its own cursor;
- ``history``: every event but provisionals: what a new subscriber replays (and what the MQTT worker republishes);
- the release marks: ``released`` (entries announced to waiting readers so far) and ``overdue``
  (entries that count against a reader's ``max_queue``: see :mod:`specdec.streaming._fanout`);
- the waiters: one future per reader that has read everything and waits for the log to grow;
- ``ended``: the ``end`` event is in the log, nothing more will be appended.

The log knows nothing of streams, threads or policies; :class:`~specdec.streaming.Stream` appends to it,
:class:`~specdec.streaming.Subscription` and the MQTT publisher read it. Use it on one event loop only.
"""

from __future__ import annotations

import asyncio
import bisect

from .events import EndEvent, Event, ProvisionalEvent

__all__ = ["EventLog"]


class EventLog:
    """Append-only events of one stream, with waiters and release marks (event loop only)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.entries: list[Event] = []
        self.history: list[Event] = []
        self._history_seqs: list[int] = []
        self.last_seq = -1
        self.ended = False
        self.released = 0  # len(entries) at the last wake-up round
        self.overdue = 0  # entries[:overdue] count against a reader's max_queue
        self._waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self.entries)

    # -- writing ------------------------------------------------------------------------

    def append(self, event: Event) -> None:
        """Add one event (its ``seq`` must follow the last). Readers learn of it at the next :meth:`wake`."""
        if self.ended:
            raise RuntimeError(f"event log of stream {event.stream_id!r} already ended; cannot append seq {event.seq}")
        self.entries.append(event)
        if not isinstance(event, ProvisionalEvent):
            self.history.append(event)
            self._history_seqs.append(event.seq)
        self.last_seq = event.seq
        if isinstance(event, EndEvent):
            self.ended = True

    def mark_released(self, *, hold_overdue: bool = False) -> None:
        """Announce every entry so far. ``hold_overdue``: entries of this round do not count as overdue yet
        (the fan-out budget held them back, so a reader is not late with them); otherwise all do."""
        self.overdue = self.released if hold_overdue else len(self.entries)
        self.released = len(self.entries)

    def wake(self) -> int:
        """Wake every waiting reader; returns how many were waiting."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # a reader cancelled while waiting leaves a cancelled future
                waiter.set_result(None)
        return len(waiters)

    # -- reading ------------------------------------------------------------------------

    def history_index_after(self, after_seq: int | None) -> int:
        """Index into ``history`` of the first event with ``seq > after_seq`` (0 for ``None``)."""
        return 0 if after_seq is None else bisect.bisect_right(self._history_seqs, after_seq)

    def history_after(self, after_seq: int) -> list[Event]:
        """The stored events (no provisionals) with ``seq > after_seq``."""
        return self.history[self.history_index_after(after_seq) :]

    @property
    def waiters(self) -> list[asyncio.Future[None]]:
        """The futures of the readers waiting now (a copy)."""
        return list(self._waiters)

    @property
    def has_waiters(self) -> bool:
        return bool(self._waiters)

    def waiter(self) -> asyncio.Future[None]:
        """A future that :meth:`wake` resolves; the caller awaits it and calls :meth:`forget` if cancelled."""
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append(future)
        return future

    def forget(self, waiter: asyncio.Future[None]) -> None:
        """Drop a waiter its reader no longer awaits (cancelled)."""
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    async def wait_beyond(self, position: int) -> None:
        """Return once the log holds more than ``position`` entries, or has ended (lossless readers)."""
        while len(self.entries) <= position and not self.ended:
            waiter = self.waiter()
            try:
                await waiter
            finally:
                if waiter.cancelled():
                    self.forget(waiter)
