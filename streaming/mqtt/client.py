"""StreamClient: request generations over MQTT and read their events, exactly once and in order.

Example::

    async with StreamClient("mqtt://127.0.0.1:1883") as client:
        async for event in client.generate("Once upon a time", max_new_tokens=64):
            if event.type == "commit":
                print(event.text, end="", flush=True)

What the client does for you (QoS 1 may redeliver and, across a reconnect,
reorder or lose messages a broker did not persist):

- **dedup**: an event whose ``seq`` was already delivered is dropped;
- **reorder**: events are buffered and handed out in ``seq`` order;
- **gap → resume**: when ``seq`` n+1.. is buffered but n is missing for
  ``gap_timeout_s``, or nothing at all arrives for ``idle_resume_s``, it
  publishes ``{"type": "resume", "after_seq": last}`` on the stream's control
  topic; the worker replays; after ``max_resume_attempts`` resumes without
  progress it raises :class:`StreamGapError`;
- **reconnect**: its :class:`~specdec.streaming.mqtt.connection.Connection`
  reconnects with jittered backoff and re-subscribes; the client then resumes
  every open stream (re-publishing the request of a stream that has not
  started, which the worker treats as idempotent). A broker that cannot be
  reached at all makes ``async with StreamClient(...)`` raise
  :class:`BrokerUnreachableError` at once;
- **timeout**: ``generate(..., timeout=30.0)`` raises :class:`NoWorkerError`
  (a :class:`StreamError`, ``code="no_worker"``, retryable) when no worker
  answers the request (no event: neither ``start``, ``queued`` nor an error)
  within ``timeout`` seconds; ``watch(..., timeout=30.0)`` likewise when no
  worker holds the stream;
- **ownership**: ``generate`` puts a random ``token`` in its request (which only
  workers can read) and :meth:`cancel` sends it: a worker obeys a ``cancel``
  only from the stream's requester;
- **queued**: a request waiting for a free generation slot yields
  :class:`QueuedEvent` notices (``seq == -1``, ``position`` 1 = next) before
  its ``start``;
- **errors**: an ``error`` event raises :class:`StreamError` instead of
  ending quietly; a ``worker_lost`` Will raises :class:`WorkerLostError`
  once confirmed: a resume brought no progress during ``worker_lost_grace_s``
  seconds *while connected* (a broker that shuts down publishes every Will;
  the grace period starts again after the connection comes back, and the
  reconnect's resume decides).

Importing this module is light: it needs neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ..errors import EventDecodeError
from ..events import ErrorEvent, Event, validate_stream_id
from .connection import Connection, Session
from .errors import NoWorkerError, StreamError, StreamGapError, WorkerLostError
from .protocol import (
    OUT_OF_BAND_SEQ,
    REQUEST_TOPIC,
    QueuedEvent,
    control_topic,
    decode_event,
    encode_json,
    events_topic,
    stream_id_from_topic,
)
from .transport import BrokerConfig, Message, TransportFactory, connect

__all__ = ["StreamClient", "new_stream_id"]

log = logging.getLogger(__name__)


def new_stream_id() -> str:
    return uuid.uuid4().hex


_RECONNECTED = object()  # queue marker: the connection came back; resume (or re-request)


@dataclass(eq=False)
class _Subscription:
    """One local reader of one stream (several readers of a stream share its topic subscription)."""

    stream_id: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class StreamClient:
    """An MQTT client for specdec streams; one connection, any number of concurrent streams.

    ``broker`` is ``mqtt://host:port`` / ``mqtts://host:port`` or a :class:`BrokerConfig`.
    """

    def __init__(
        self,
        broker: str | BrokerConfig,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        transport_factory: TransportFactory = connect,
        gap_timeout_s: float = 0.25,
        idle_resume_s: float = 2.0,
        max_resume_attempts: int = 20,
        worker_lost_grace_s: float = 3.0,
        request_expiry_s: int = 300,
        client_id: str | None = None,
    ) -> None:
        self.config = (
            broker
            if isinstance(broker, BrokerConfig)
            else BrokerConfig.from_url(broker, username=username, password=password, tls_ca=tls_ca)
        )
        self.gap_timeout_s = gap_timeout_s
        self.idle_resume_s = idle_resume_s
        self.max_resume_attempts = max_resume_attempts
        self.worker_lost_grace_s = worker_lost_grace_s
        self.request_expiry_s = request_expiry_s
        self.client_id = client_id or f"specdec-client-{uuid.uuid4().hex[:12]}"
        self._closing = False
        self._stack: contextlib.AsyncExitStack | None = None
        self._subs: dict[str, set[_Subscription]] = {}  # stream_id -> local readers
        self._tokens: dict[str, str] = {}  # stream_id -> the control token of a stream this client requested
        self._conn = Connection(
            self.config,
            client_id=self.client_id,
            factory=transport_factory,
            topics=lambda: [events_topic(stream_id) for stream_id in self._subs],
            on_message=self._dispatch,
            on_connect=self._on_connect,
            label="client",
        )

    @property
    def reconnects(self) -> int:
        """How often the connection to the broker came back after a loss."""
        return self._conn.reconnects

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> StreamClient:
        """Connect (raises :class:`BrokerUnreachableError` with a hint when the broker cannot be reached)."""
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._conn)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _on_connect(self, session: Session) -> None:
        if session.number > 1:  # the connection came back: every reader resumes (or re-requests)
            for subs in self._subs.values():
                for sub in subs:
                    sub.queue.put_nowait(_RECONNECTED)

    def _dispatch(self, message: Message) -> None:
        topic, payload = message.topic, message.payload
        stream_id = stream_id_from_topic(topic)
        subs = self._subs.get(stream_id) if stream_id else None
        if not subs:
            return
        try:
            event = decode_event(payload)
        except (EventDecodeError, ValueError, TypeError) as exc:
            log.warning("dropping an undecodable event on %s: %s", topic, exc)
            return
        if event.stream_id != stream_id:
            return
        for sub in subs:
            sub.queue.put_nowait(event)

    # ------------------------------------------------------------------ sending

    async def _publish(self, topic: str, payload: bytes, *, expiry_s: int | None = None, retry: bool = True) -> bool:
        """Publish QoS 1; while disconnected, wait for the connection (when ``retry``)."""
        if self._closing:
            return False
        return await self._conn.publish(topic, payload, qos=1, expiry_s=expiry_s, retry=retry)

    async def _subscribe(self, stream_id: str) -> _Subscription:
        sub = _Subscription(stream_id)
        first = stream_id not in self._subs
        self._subs.setdefault(stream_id, set()).add(sub)
        if first:
            await self._conn.subscribe(events_topic(stream_id))
        return sub

    async def _unsubscribe(self, sub: _Subscription) -> None:
        subs = self._subs.get(sub.stream_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.stream_id]
            await self._conn.unsubscribe(events_topic(sub.stream_id))

    async def cancel(self, stream_id: str, *, token: str | None = None) -> None:
        """Ask the worker serving ``stream_id`` to stop; its readers then see ``end(cancelled)``.

        Workers obey only the requester: this client sends the token of a stream it requested
        (``token`` overrides it, e.g. for a stream requested by another process of the same owner);
        a cancel without the right token is ignored.
        """
        token = token if token is not None else self._tokens.get(validate_stream_id(stream_id))
        message: dict[str, Any] = {"type": "cancel"}
        if token is not None:
            message["token"] = token
        await self._publish(control_topic(validate_stream_id(stream_id)), encode_json(message))

    async def resume(self, stream_id: str, after_seq: int) -> None:
        """Ask the worker to replay every event of ``stream_id`` with ``seq > after_seq``."""
        await self._publish(
            control_topic(validate_stream_id(stream_id)),
            encode_json({"type": "resume", "after_seq": int(after_seq)}),
            retry=False,
        )

    # ------------------------------------------------------------------ reading

    async def generate(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        input_ids: list[int] | None = None,
        stream_id: str | None = None,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int | None = None,
        provisional: bool = False,
        timeout: float | None = 30.0,
    ) -> AsyncIterator[Event | QueuedEvent]:
        """Send a request and yield its events (start, commits, provisionals, end) exactly once, in order.

        A request that waits for a free slot on the worker first yields
        :class:`QueuedEvent` notices (``seq == -1``, with its ``position``).
        Give one of ``prompt``, ``messages`` or ``input_ids``. ``timeout``: how
        long to wait for a worker to answer (its ``start`` or ``queued`` event,
        or an error) before raising :class:`NoWorkerError`; ``None`` waits forever.
        Once the stream started, a slow generation never times out. When sampling
        without a ``seed``, the client picks one, so that a request re-sent
        after a reconnect yields the same stream. Leaving the loop early
        cancels the generation.
        """
        stream_id = validate_stream_id(stream_id) if stream_id is not None else new_stream_id()
        request: dict[str, Any] = {"v": 1, "stream_id": stream_id}
        sources = {"prompt": prompt, "messages": messages, "input_ids": input_ids}
        given = {k: v for k, v in sources.items() if v is not None}
        if len(given) != 1:
            raise ValueError("pass exactly one of prompt, messages, input_ids")
        _check_timeout(timeout)
        request.update(given)
        if do_sample and seed is None:
            seed = random.randrange(2**62)
        options = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "seed": seed,
        }
        request.update({k: v for k, v in options.items() if v is not None})
        if provisional:
            request["provisional"] = True
        token = request["token"] = secrets.token_urlsafe(24)  # 32 characters; only workers read requests
        payload = encode_json(request)
        self._tokens[stream_id] = token
        finished = False
        try:
            async for event in self._read(stream_id, request_payload=payload, timeout=timeout):
                if event.type == "end":
                    finished = True
                yield event
            finished = True
        except StreamError:
            finished = True
            raise
        finally:
            try:
                if not finished and not self._closing:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self.cancel(stream_id, token=token))
            finally:
                self._tokens.pop(stream_id, None)

    async def watch(
        self, stream_id: str, *, after_seq: int = -1, replay: bool = False, timeout: float | None = 30.0
    ) -> AsyncIterator[Event | QueuedEvent]:
        """Follow an existing stream (one you did not request): events with ``seq > after_seq``, in order.

        With ``replay=True`` it asks the worker for what was published before
        it subscribed; otherwise a gap is noticed at the first live event and
        filled by a resume anyway. ``timeout``: raise :class:`NoWorkerError` if
        nothing of the stream arrives within that many seconds (no worker holds
        it); ``None`` waits forever.
        """
        validate_stream_id(stream_id)
        _check_timeout(timeout)
        async for event in self._read(stream_id, after_seq=after_seq, initial_resume=replay, timeout=timeout):
            yield event

    async def _read(
        self,
        stream_id: str,
        *,
        request_payload: bytes | None = None,
        after_seq: int = -1,
        initial_resume: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[Event | QueuedEvent]:
        sub = await self._subscribe(stream_id)
        try:
            if request_payload is not None:
                await self._publish(REQUEST_TOPIC, request_payload, expiry_s=self.request_expiry_s)
            elif initial_resume:
                await self.resume(stream_id, after_seq)
            next_seq = after_seq + 1
            buffer: dict[int, Event] = {}
            attempts = 0
            started = next_seq > 0
            answered = False  # a worker said something about this stream (an event, a queued notice, an error)
            queued = False  # a worker holds our request in its queue
            lost: ErrorEvent | None = None  # a worker_lost Will, not yet confirmed
            lost_left = 0.0  # seconds of grace left, counted only while connected
            loop = asyncio.get_running_loop()
            answer_deadline = None if timeout is None else loop.time() + timeout
            while True:
                wait_s = self.gap_timeout_s if buffer else self.idle_resume_s
                if lost is not None:
                    wait_s = min(wait_s, max(0.0, lost_left))
                if answer_deadline is not None and not answered:
                    if loop.time() >= answer_deadline:
                        what = "answered the request" if request_payload is not None else f"holds stream {stream_id}"
                        raise NoWorkerError(
                            f"no worker {what} within {timeout} s (no event): is a `specdec serve` worker "
                            f"connected to {self.config.host}:{self.config.port}?",
                            retryable=True,
                            stream_id=stream_id,
                        )
                    wait_s = min(wait_s, answer_deadline - loop.time())
                waited_from = loop.time()
                try:
                    item = await asyncio.wait_for(sub.queue.get(), wait_s)
                except TimeoutError:
                    item = None
                if lost is not None:
                    if self._conn.session is None:
                        lost_left = self.worker_lost_grace_s  # disconnected: the grace starts again once back
                    else:
                        lost_left -= loop.time() - waited_from
                        if item is None and lost_left <= 0:
                            raise WorkerLostError(
                                lost.message, code=lost.code, retryable=lost.retryable, stream_id=stream_id
                            )
                if item is None or item is _RECONNECTED:
                    if item is _RECONNECTED:
                        lost = None  # the broker went away: its shutdown sends every Will; trust the resume
                    if item is None and buffer:
                        attempts += 1
                        if attempts > self.max_resume_attempts:
                            raise StreamGapError(
                                f"events after seq {next_seq - 1} never arrived after {attempts - 1} resumes",
                                retryable=True,
                                stream_id=stream_id,
                            )
                    if item is _RECONNECTED and not started and request_payload is not None:
                        # The request may have died with the broker; the worker treats a repeat as idempotent.
                        await self._publish(REQUEST_TOPIC, request_payload, expiry_s=self.request_expiry_s)
                    else:
                        await self.resume(stream_id, next_seq - 1)
                    continue
                answered = True
                if isinstance(item, QueuedEvent):
                    queued = True
                    if not started:
                        yield item
                    continue
                event: Event = item
                if event.seq == OUT_OF_BAND_SEQ:
                    if isinstance(event, ErrorEvent):
                        if event.code == "worker_lost":
                            # A broker shutting down also publishes every Will, so confirm first: if the worker
                            # is alive the resume brings progress, if the broker went away we reconnect.
                            if lost is None:
                                lost = event
                                lost_left = self.worker_lost_grace_s
                            await self.resume(stream_id, next_seq - 1)
                        elif request_payload is not None and not started and not queued:
                            # e.g. duplicate_stream: our request was refused. Once a worker took our request
                            # (queued), or for a watcher (who sent none), such a notice concerns someone
                            # else's request with this id: ignore it.
                            raise StreamError(
                                event.message, code=event.code, retryable=event.retryable, stream_id=stream_id
                            )
                    continue
                if event.seq < next_seq or event.seq in buffer:
                    continue  # a QoS 1 redelivery or a replay of what we have
                buffer[event.seq] = event
                if next_seq in buffer:
                    attempts = 0
                while next_seq in buffer:
                    lost = None  # progress: the worker is alive
                    event = buffer.pop(next_seq)
                    next_seq += 1
                    started = True
                    if isinstance(event, ErrorEvent):
                        cls = WorkerLostError if event.code == "worker_lost" else StreamError
                        raise cls(event.message, code=event.code, retryable=event.retryable, stream_id=stream_id)
                    yield event
                    if event.type == "end":
                        return
        finally:
            await self._unsubscribe(sub)


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a number of seconds > 0 or None, got {timeout!r}")
