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
- **reconnect**: when the broker goes away it reconnects with jittered
  backoff, re-subscribes and resumes every open stream (re-publishing the
  request of a stream that has not started, which the worker treats as
  idempotent);
- **errors**: an ``error`` event raises :class:`StreamError` instead of
  ending quietly; a ``worker_lost`` Will raises :class:`WorkerLostError`
  once confirmed: no progress and no broker reconnect for
  ``worker_lost_grace_s`` (a broker that shuts down publishes every Will).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, AsyncIterator

from ..events import ErrorEvent, Event, EventDecodeError, validate_stream_id
from .errors import StreamError, StreamGapError, TransportError, WorkerLostError
from .protocol import (
    OUT_OF_BAND_SEQ,
    REQUEST_TOPIC,
    control_topic,
    decode_event,
    encode_json,
    events_topic,
    stream_id_from_topic,
)
from .transport import BrokerConfig, Transport, TransportFactory, backoff_delays, connect

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
        self._factory = transport_factory
        self.gap_timeout_s = gap_timeout_s
        self.idle_resume_s = idle_resume_s
        self.max_resume_attempts = max_resume_attempts
        self.worker_lost_grace_s = worker_lost_grace_s
        self.request_expiry_s = request_expiry_s
        self.client_id = client_id or f"specdec-client-{uuid.uuid4().hex[:12]}"
        self._transport: Transport | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._subs: dict[str, set[_Subscription]] = {}  # stream_id -> local readers
        self.reconnects = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "StreamClient":
        first = self._factory(self.config, client_id=self.client_id)
        await first.__aenter__()  # fail fast with TransportError when the broker is unreachable
        self._supervisor = asyncio.create_task(self._run(first), name=f"specdec-client-{self.client_id}")
        await self._connected.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._supervisor = None

    async def _run(self, first: Transport) -> None:
        transport: Transport | None = first
        delays = backoff_delays()
        while not self._closing:
            try:
                if transport is None:
                    transport = self._factory(self.config, client_id=self.client_id)
                    await transport.__aenter__()
                    self.reconnects += 1
                try:
                    for stream_id in list(self._subs):
                        await transport.subscribe(events_topic(stream_id))
                    self._transport = transport
                    self._connected.set()
                    delays = backoff_delays()
                    if self.reconnects:
                        for subs in self._subs.values():
                            for sub in subs:
                                sub.queue.put_nowait(_RECONNECTED)
                    async for message in transport.messages():
                        self._dispatch(message.topic, message.payload)
                finally:
                    self._connected.clear()
                    self._transport = None
                    await transport.__aexit__(None, None, None)
            except TransportError as exc:
                log.info("broker connection lost (%s); reconnecting", exc)
            transport = None
            if not self._closing:
                await asyncio.sleep(next(delays))

    def _dispatch(self, topic: str, payload: bytes) -> None:
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
        while not self._closing:
            await self._connected.wait()
            transport = self._transport
            if transport is None:
                continue
            try:
                await transport.publish(topic, payload, qos=1, expiry_s=expiry_s)
                return True
            except TransportError:
                if not retry:
                    return False
                await asyncio.sleep(0.05)
        return False

    async def _subscribe(self, stream_id: str) -> _Subscription:
        sub = _Subscription(stream_id)
        first = stream_id not in self._subs
        self._subs.setdefault(stream_id, set()).add(sub)
        if first:
            while True:
                await self._connected.wait()
                transport = self._transport
                if transport is None:
                    continue
                try:
                    await transport.subscribe(events_topic(stream_id))
                    break
                except TransportError:
                    await asyncio.sleep(0.05)  # the reconnect re-subscribes; wait for it
        return sub

    async def _unsubscribe(self, sub: _Subscription) -> None:
        subs = self._subs.get(sub.stream_id)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.stream_id]
            transport = self._transport
            if transport is not None:
                with contextlib.suppress(TransportError):
                    await transport.unsubscribe(events_topic(sub.stream_id))

    async def cancel(self, stream_id: str) -> None:
        """Ask the worker serving ``stream_id`` to stop; its readers then see ``end(cancelled)``."""
        await self._publish(control_topic(validate_stream_id(stream_id)), encode_json({"type": "cancel"}))

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
    ) -> AsyncIterator[Event]:
        """Send a request and yield its events (start, commits, provisionals, end) exactly once, in order.

        Give one of ``prompt``, ``messages`` or ``input_ids``. When sampling
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
        payload = encode_json(request)
        finished = False
        try:
            async for event in self._read(stream_id, request_payload=payload):
                if event.type == "end":
                    finished = True
                yield event
            finished = True
        except StreamError:
            finished = True
            raise
        finally:
            if not finished and not self._closing:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.cancel(stream_id))

    async def watch(self, stream_id: str, *, after_seq: int = -1, replay: bool = False) -> AsyncIterator[Event]:
        """Follow an existing stream (one you did not request): events with ``seq > after_seq``, in order.

        With ``replay=True`` it asks the worker for what was published before
        it subscribed; otherwise a gap is noticed at the first live event and
        filled by a resume anyway.
        """
        validate_stream_id(stream_id)
        async for event in self._read(stream_id, after_seq=after_seq, initial_resume=replay):
            yield event

    async def _read(
        self,
        stream_id: str,
        *,
        request_payload: bytes | None = None,
        after_seq: int = -1,
        initial_resume: bool = False,
    ) -> AsyncIterator[Event]:
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
            lost: ErrorEvent | None = None  # a worker_lost Will, not yet confirmed
            lost_deadline = 0.0
            loop = asyncio.get_running_loop()
            while True:
                timeout = self.gap_timeout_s if buffer else self.idle_resume_s
                if lost is not None:
                    timeout = min(timeout, max(0.0, lost_deadline - loop.time()))
                try:
                    item = await asyncio.wait_for(sub.queue.get(), timeout)
                except asyncio.TimeoutError:
                    item = None
                if lost is not None and item is None and loop.time() >= lost_deadline:
                    raise WorkerLostError(lost.code, lost.message, retryable=lost.retryable, stream_id=stream_id)
                if item is None or item is _RECONNECTED:
                    if item is _RECONNECTED:
                        lost = None  # the broker went away: its shutdown sends every Will; trust the resume
                    if item is None and buffer:
                        attempts += 1
                        if attempts > self.max_resume_attempts:
                            raise StreamGapError(
                                "gap",
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
                event: Event = item
                if event.seq == OUT_OF_BAND_SEQ:
                    if isinstance(event, ErrorEvent):
                        if event.code == "worker_lost":
                            # A broker shutting down also publishes every Will, so confirm first: if the worker
                            # is alive the resume brings progress, if the broker went away we reconnect.
                            lost = event
                            lost_deadline = loop.time() + self.worker_lost_grace_s
                            await self.resume(stream_id, next_seq - 1)
                        elif not started:
                            raise StreamError(event.code, event.message, retryable=event.retryable, stream_id=stream_id)
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
                        raise cls(event.code, event.message, retryable=event.retryable, stream_id=stream_id)
                    yield event
                    if event.type == "end":
                        return
        finally:
            await self._unsubscribe(sub)

