"""Publishing one stream's event log to its MQTT events topic, and replaying it on ``resume``.

The replay store is the stream's :class:`~specdec.streaming.EventLog`, the
same object the in-process hub keeps (no copy). The lossless policy:

- the publisher reads ``log.entries`` directly with its own cursor, not through
  a :class:`~specdec.streaming.Subscription`, so no overflow policy ever merges
  or drops an event on the way to the broker: every event is published, in
  ``seq`` order, QoS 1, with an MQTT 5 message expiry;
- up to ``window`` publishes are in flight; ``acked`` advances over the
  acknowledged prefix, and after a lost connection publishing starts again at
  the first unacknowledged event (events after it may reach subscribers twice,
  which QoS 1 allows and clients deduplicate by ``seq``);
- a ``resume`` republishes every logged event with ``seq > after_seq`` up to
  the last acknowledged one, provisionals included, so that the sequence a
  client reorders by ``seq`` stays gap-free (a stale provisional is ignored by
  the client); later events are on their way through the publisher;
- replays are coalesced and rate-limited per stream: resumes that arrive while
  a replay runs merge into one, and an event republished less than
  ``replay_window_s`` ago is not republished again (every subscriber of the
  stream got that copy), so any number of resumes within a window sends the
  log at most once (a subscriber that joined just after waits for its next
  resume);
- the worker holds the log object until the stream has been published and its
  ``linger_s`` has passed, so a hub expiring the stream never takes events from
  under the publisher.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from .._log import EventLog
from .connection import Connection, Session
from .errors import TransportError
from .protocol import encode_event

__all__ = ["LogPublisher"]

_REPLAY_BATCH = 256  # events per replay batch


class LogPublisher:
    """Publishes one :class:`EventLog` to ``topic`` over a :class:`Connection`, and replays it on request."""

    def __init__(
        self,
        conn: Connection,
        log: EventLog,
        topic: str,
        *,
        expiry_s: int,
        window: int = 1000,
        replay_window_s: float = 1.0,
    ) -> None:
        self._conn = conn
        self.log = log
        self.topic = topic
        self._expiry_s = expiry_s
        self._window = window
        self._payloads: list[bytes] = []  # encoded entries, by index (each event is encoded once)
        self.acked = 0  # log.entries[:acked] were acknowledged by the broker
        self._changed = asyncio.Event()
        self._replay_from: int | None = None
        self._replaying = False
        self._log_waiter: asyncio.Future[None] | None = None
        self._replay_window_s = replay_window_s
        self._replayed_at: list[float] = []  # by entry index: when a replay last republished it (monotonic)
        self.replayed = 0  # events republished by replays so far

    @property
    def done(self) -> bool:
        """The log ended and every event of it was acknowledged."""
        return self.log.ended and self.acked >= len(self.log.entries)

    def _wake(self, _: object = None) -> None:
        self._changed.set()

    def _payload(self, index: int) -> bytes:
        while len(self._payloads) <= index:
            self._payloads.append(encode_event(self.log.entries[len(self._payloads)]))
        return self._payloads[index]

    async def run(self) -> None:
        """Publish the log as it grows, until it has ended and every event is acknowledged."""
        while not self.done:
            if self.acked >= len(self.log.entries):
                await self.log.wait_beyond(self.acked)
                continue
            session = await self._conn.wait_session()
            if not await self._pipeline(session):
                await asyncio.sleep(0.05)  # the connection is going down; wait for the next one

    async def _pipeline(self, session: Session) -> bool:
        """Publish each entry the moment it lands, keeping up to ``window`` unacknowledged.

        Returns True once the log has ended and all of it is acknowledged, False
        when a publish failed or the session was lost (the caller goes on from
        ``acked`` on the next session). A new entry goes to the transport without
        waiting for earlier acknowledgements: an event's latency is one broker hop.
        """
        entries = self.log.entries
        inflight: deque[asyncio.Future[None]] = deque()
        issued = self.acked
        session.lost.add_done_callback(self._wake)
        try:
            while True:
                if session.lost.done():
                    # Its pending publishes may never complete (the client does not fail them).
                    return False
                while issued < len(entries) and len(inflight) < self._window:
                    publish = session.transport.publish(
                        self.topic, self._payload(issued), qos=1, expiry_s=self._expiry_s
                    )
                    future = asyncio.ensure_future(publish)
                    future.add_done_callback(self._wake)
                    inflight.append(future)
                    issued += 1
                while inflight and inflight[0].done():
                    exc = inflight.popleft().exception()
                    if exc is not None:
                        if not isinstance(exc, TransportError):
                            raise exc
                        return False
                    self.acked += 1
                if self.done:
                    return True
                if issued < len(entries) and len(inflight) < self._window:
                    continue
                self._changed.clear()  # no await since the checks above: no wake-up can be lost
                if issued >= len(entries) and not self.log.ended and (
                    self._log_waiter is None or self._log_waiter.done()
                ):
                    self._log_waiter = self.log.waiter()
                    self._log_waiter.add_done_callback(self._wake)
                await self._changed.wait()
        finally:
            session.lost.remove_done_callback(self._wake)
            for pending in inflight:
                pending.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

    # -- replay ----------------------------------------------------------------------------

    def want_replay(self, after_seq: int) -> bool:
        """Note a ``resume`` from ``after_seq``; True when the caller must start :meth:`replay` (none running)."""
        self._replay_from = after_seq if self._replay_from is None else min(self._replay_from, after_seq)
        if self._replaying:
            return False
        self._replaying = True
        return True

    async def replay(self) -> None:
        """Republish the stored events the resumes asked for (merged while one replay runs)."""
        try:
            while self._replay_from is not None:
                after_seq, self._replay_from = self._replay_from, None
                entries = self.log.entries
                now = time.monotonic()
                upto = min(self.acked, len(entries))
                if len(self._replayed_at) < upto:
                    self._replayed_at.extend([-float("inf")] * (upto - len(self._replayed_at)))
                chosen = [
                    i
                    for i in range(upto)
                    if entries[i].seq > after_seq and now - self._replayed_at[i] >= self._replay_window_s
                ]
                for i in chosen:
                    self._replayed_at[i] = now
                self.replayed += len(chosen)
                payloads = [self._payload(i) for i in chosen]
                for start in range(0, len(payloads), _REPLAY_BATCH):
                    chunk = payloads[start : start + _REPLAY_BATCH]
                    await self._conn.publish_many(self.topic, chunk, expiry_s=self._expiry_s)
        finally:
            self._replaying = False
