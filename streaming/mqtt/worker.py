"""The MQTT worker: takes requests from the broker, generates, publishes each stream's events.

One worker holds one loaded :class:`specdec.SpeculativeGenerator` and runs one
generation at a time on it (requests queue behind a lock); any number of
streams can be open at once (queued, generating, or finished and lingering for
resumes). N workers share requests through the MQTT 5 shared subscription
``$share/specdec/specdec/v1/requests``.

Per stream the worker keeps the log of every event it published (the
serialized payloads, seq 0, 1, 2, ...), fed by a :class:`specdec.streaming.StreamHub`
subscription. A publisher task walks the log and publishes each event QoS 1
with a message expiry; after a broker outage it picks up where the broker
stopped acknowledging. A ``resume`` on the control topic republishes the log
after ``after_seq``. The log outlives the stream by ``linger_s`` seconds.

The Will design (see docs/mqtt.md, "Worker loss"): an MQTT Will is fixed when
a connection is made, so one Will cannot name streams that arrive later.
Instead, every accepted stream gets its own small *guard* connection whose
Will is ``error(code="worker_lost", seq=-1)`` on that stream's events topic.
When the stream ends, the guard disconnects cleanly and the broker drops the
Will; when the worker dies, the broker publishes every guard's Will, i.e. an
error on exactly the streams the worker was serving. The worker's main
connection also has a Will: a retained ``{"state": "lost"}`` on
``specdec/v1/workers/{worker_id}/status`` for operators.

Example::

    await serve("mqtt://127.0.0.1:1883", generator, tokenizer, model_name="tiny", draft_name="ngram")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..events import EndEvent, ErrorEvent, Event, StartEvent, Usage
from .errors import BadRequestError, TransportError
from .protocol import (
    CONTROL_WILDCARD,
    OUT_OF_BAND_SEQ,
    SHARED_REQUEST_TOPIC,
    GenerationRequest,
    RequestLimits,
    encode_event,
    encode_json,
    events_topic,
    parse_control,
    parse_request,
    stream_id_from_topic,
    worker_status_topic,
)
from .transport import BrokerConfig, Message, Transport, TransportFactory, WillSpec, backoff_delays, connect

__all__ = ["WorkerSettings", "Worker", "serve"]

log = logging.getLogger(__name__)

_PUBLISH_BATCH = 256  # events per resume batch
_PUBLISH_WINDOW = 1000  # unacknowledged event publishes per stream (the transport's in-flight window)
_COLLECT_QUEUE = 1 << 30  # the worker's hub subscription: never full, so the hub never merges or drops


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Knobs of a worker; the defaults suit one machine."""

    model_name: str = "unknown"
    draft_name: str = "unknown"
    limits: RequestLimits = field(default_factory=RequestLimits)
    worker_id: str | None = None  # default: a random id
    event_expiry_s: int = 600  # MQTT 5 message expiry on every event
    linger_s: float = 120.0  # how long a finished stream's log stays available for resume
    max_open_streams: int = 64  # queued + generating; beyond it requests get error(code="busy")
    max_tracked_streams: int = 10_000  # finished streams kept for linger; oldest dropped first
    will_delay_s: int = 0  # MQTT 5 Will Delay Interval for the guard and status Wills
    guards: bool = True  # per-stream Will connections (see the module docstring)


@dataclass(eq=False)
class _WorkerStream:
    stream_id: str
    payload: bytes  # the raw request, to recognize an idempotent re-send
    request: GenerationRequest | None
    entries: list[tuple[int, bytes]] = field(default_factory=list)  # (seq, payload) in seq order
    published: int = 0  # entries[:published] were acknowledged by the broker
    finished: bool = False  # no more entries will be appended
    finished_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    hub_stream: Any = None
    cancel_requested: bool = False
    replay_from: int | None = None
    replay_task: asyncio.Task[None] | None = None
    task: asyncio.Task[None] | None = None
    ended: bool = False  # an end event is in the log

    def append(self, event: Event) -> None:
        self.entries.append((event.seq, encode_event(event)))
        self.ended = self.ended or event.type == "end"
        self.changed.set()

    def finish(self) -> None:
        self.finished = True
        self.finished_at = time.monotonic()
        self.changed.set()

    @property
    def open(self) -> bool:
        return not self.finished or self.published < len(self.entries)


def _rejection(stream_id: str, code: str, message: str, *, retryable: bool = False) -> list[Event]:
    return [
        ErrorEvent(stream_id=stream_id, seq=0, code=code, message=message, retryable=retryable),
        EndEvent(
            stream_id=stream_id,
            seq=1,
            finish_reason="error",
            usage=Usage(prompt_tokens=0, completion_tokens=0, drafted=0, accepted=0),
            text="",
        ),
    ]


class Worker:
    """Serve generation requests from an MQTT broker until cancelled.

    ``async with Worker(...) as worker:`` runs it in a background task and
    returns once it is connected and subscribed (``worker.ready``).
    """

    def __init__(
        self,
        broker: str | BrokerConfig,
        generator: Any,
        tokenizer: Any,
        *,
        settings: WorkerSettings | None = None,
        hub: Any = None,
        transport_factory: TransportFactory = connect,
    ) -> None:
        self.config = broker if isinstance(broker, BrokerConfig) else BrokerConfig.from_url(broker)
        self.generator = generator
        self.tokenizer = tokenizer
        self.settings = settings or WorkerSettings()
        self.worker_id = self.settings.worker_id or uuid.uuid4().hex[:12]
        if hub is None:
            from ..hub import StreamHub  # the in-process layer this worker publishes

            hub = StreamHub(retention_s=0)  # the worker keeps its own log of every stream for resumes
        self.hub = hub
        self._factory = transport_factory
        self._transport: Transport | None = None
        self._connected = asyncio.Event()
        self.ready = asyncio.Event()
        self._streams: dict[str, _WorkerStream] = {}
        self._generate_lock = asyncio.Lock()  # one generation at a time on this model
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self.counters = {"requests": 0, "rejected": 0, "served": 0, "reconnects": 0, "controls": 0}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "Worker":
        self._runner = asyncio.create_task(self.run(), name=f"specdec-worker-{self.worker_id}")
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait({ready, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        if self._runner.done():
            ready.cancel()
            self._runner.result()  # raises what run() raised
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def run(self) -> None:
        """Connect, serve, and reconnect with jittered backoff, until cancelled."""
        status = worker_status_topic(self.worker_id)
        will = WillSpec(
            topic=status,
            payload=encode_json({"v": 1, "worker_id": self.worker_id, "state": "lost"}),
            retain=True,
            delay_s=self.settings.will_delay_s,
        )
        delays = backoff_delays()
        first = True
        try:
            while True:
                try:
                    async with self._factory(
                        self.config,
                        client_id=f"specdec-worker-{self.worker_id}",
                        will=will,
                        session_expiry_s=self.settings.will_delay_s or None,
                    ) as transport:
                        await transport.subscribe(SHARED_REQUEST_TOPIC)
                        await transport.subscribe(CONTROL_WILDCARD)
                        await transport.publish(status, self._status("online"), retain=True)
                        self._transport = transport
                        self._connected.set()
                        if not first:
                            self.counters["reconnects"] += 1
                        first = False
                        self.ready.set()
                        delays = backoff_delays()
                        log.info("worker %s connected to %s:%s", self.worker_id, self.config.host, self.config.port)
                        try:
                            async for message in transport.messages():
                                self._on_message(message)
                        finally:
                            self._connected.clear()
                            self._transport = None
                            for ws in self._streams.values():
                                ws.changed.set()  # publishers on this connection stop waiting for it
                except TransportError as exc:
                    log.warning("worker %s: broker connection lost (%s); reconnecting", self.worker_id, exc)
                await asyncio.sleep(next(delays))
        finally:
            await self._shutdown(status)

    async def _shutdown(self, status: str) -> None:
        self._closing = True
        for ws in list(self._streams.values()):
            if not ws.finished:
                await self._cancel(ws)
        open_tasks = [ws.task for ws in self._streams.values() if ws.task is not None and not ws.task.done()]
        if open_tasks:
            await asyncio.wait(open_tasks, timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        transport = self._transport
        if transport is not None:
            with contextlib.suppress(TransportError):
                await asyncio.wait_for(transport.publish(status, self._status("offline"), retain=True), 2.0)

    def _status(self, state: str) -> bytes:
        return encode_json(
            {
                "v": 1,
                "worker_id": self.worker_id,
                "state": state,
                "model": self.settings.model_name,
                "draft": self.settings.draft_name,
                "ts": time.time(),
            }
        )

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ incoming

    def _on_message(self, message: Message) -> None:
        """Route one message. Never raises: a bad message is answered or logged, and serving goes on."""
        try:
            if message.topic.endswith("/control"):
                self._on_control(message)
            else:
                self._on_request(message.payload)
        except Exception:  # noqa: BLE001 - the worker must survive anything it receives
            log.exception("worker %s: unexpected error handling a message on %s", self.worker_id, message.topic)

    def _on_request(self, payload: bytes) -> None:
        self.counters["requests"] += 1
        self._prune()
        try:
            request = parse_request(payload, self.settings.limits)
        except BadRequestError as exc:
            self.counters["rejected"] += 1
            log.info("worker %s: bad request (%s)", self.worker_id, exc)
            if exc.stream_id is not None:
                self._reject(exc.stream_id, payload, exc.code, str(exc))
            return
        existing = self._streams.get(request.stream_id)
        if existing is not None:
            if existing.payload == bytes(payload):
                # The client re-sent its request (e.g. after a broker restart): replay, don't regenerate.
                self._request_replay(existing, -1)
                return
            self.counters["rejected"] += 1
            notice = ErrorEvent(
                stream_id=request.stream_id,
                seq=OUT_OF_BAND_SEQ,
                code="duplicate_stream",
                message=f"stream_id {request.stream_id} is taken by another request; pick a fresh id",
            )
            self._spawn(self._publish_once(events_topic(request.stream_id), encode_event(notice)), "oob-notice")
            return
        if sum(1 for ws in self._streams.values() if not ws.finished) >= self.settings.max_open_streams:
            self.counters["rejected"] += 1
            self._reject(
                request.stream_id,
                payload,
                "busy",
                f"this worker has {self.settings.max_open_streams} open streams; retry later",
                retryable=True,
            )
            return
        ws = _WorkerStream(request.stream_id, bytes(payload), request)
        self._streams[ws.stream_id] = ws
        ws.task = self._spawn(self._serve_stream(ws), f"stream-{ws.stream_id}")

    def _reject(self, stream_id: str, payload: bytes, code: str, message: str, *, retryable: bool = False) -> None:
        if stream_id in self._streams:
            return  # never write a second seq 0 into a stream that exists
        ws = _WorkerStream(stream_id, bytes(payload), None)
        for event in _rejection(stream_id, code, message, retryable=retryable):
            ws.append(event)
        ws.finish()
        self._streams[stream_id] = ws
        ws.task = self._spawn(self._publish_log(ws), f"reject-{stream_id}")

    def _on_control(self, message: Message) -> None:
        stream_id = stream_id_from_topic(message.topic)
        ws = self._streams.get(stream_id) if stream_id else None
        if ws is None:
            return  # another worker's stream, or one long gone
        self.counters["controls"] += 1
        try:
            command = parse_control(message.payload)
        except BadRequestError as exc:
            log.info("worker %s: bad control message for %s (%s)", self.worker_id, stream_id, exc)
            return
        if command.type == "cancel":
            self._spawn(self._cancel(ws), f"cancel-{stream_id}")
        else:
            self._request_replay(ws, command.after_seq)

    async def _cancel(self, ws: _WorkerStream) -> None:
        ws.cancel_requested = True
        if ws.hub_stream is not None and not ws.finished:
            await ws.hub_stream.cancel()

    def _prune(self) -> None:
        now = time.monotonic()
        done = [ws for ws in self._streams.values() if ws.finished and not ws.open]
        expired = {ws.stream_id for ws in done if now - ws.finished_at > self.settings.linger_s}
        overflow = len(self._streams) - len(expired) - self.settings.max_tracked_streams
        if overflow > 0:
            rest = sorted((ws for ws in done if ws.stream_id not in expired), key=lambda ws: ws.finished_at)
            expired.update(ws.stream_id for ws in rest[:overflow])
        for stream_id in expired:
            del self._streams[stream_id]

    # ------------------------------------------------------------------ one stream

    async def _serve_stream(self, ws: _WorkerStream) -> None:
        guard = self._spawn(self._guard(ws), f"guard-{ws.stream_id}") if self.settings.guards else None
        publisher = asyncio.create_task(self._publish_log(ws), name=f"publish-{ws.stream_id}")
        try:
            await self._generate(ws)
        except Exception as exc:  # noqa: BLE001 - reaches subscribers as an error event
            log.exception("worker %s: stream %s failed", self.worker_id, ws.stream_id)
            if not ws.ended:
                seq = ws.entries[-1][0] + 1 if ws.entries else 0
                ws.append(ErrorEvent(stream_id=ws.stream_id, seq=seq, code="internal", message=str(exc)[:500]))
                ws.append(
                    EndEvent(
                        stream_id=ws.stream_id,
                        seq=seq + 1,
                        finish_reason="error",
                        usage=Usage(prompt_tokens=0, completion_tokens=0, drafted=0, accepted=0),
                        text="",
                    )
                )
        finally:
            ws.finish()
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher
            finally:  # even if publishing failed: a guard left open would keep the stream's Will armed
                if guard is not None:
                    guard.cancel()  # clean DISCONNECT: the broker drops this stream's Will
                    with contextlib.suppress(asyncio.CancelledError):
                        await guard
        self.counters["served"] += 1

    def _input_ids(self, request: GenerationRequest) -> list[int]:
        tok = self.tokenizer
        try:
            if request.input_ids is not None:
                ids = request.input_ids
            elif request.messages is not None:
                ids = tok.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
            else:
                ids = tok(request.prompt, add_special_tokens=True)["input_ids"]
        except Exception as exc:  # noqa: BLE001 - e.g. no chat template
            raise BadRequestError(f"cannot tokenize the prompt: {str(exc)[:300]}", stream_id=request.stream_id) from exc
        ids = list(ids)
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        if not ids:
            raise BadRequestError("the prompt tokenizes to nothing", stream_id=request.stream_id)
        vocab = getattr(getattr(self.generator, "target", None), "vocab_size", None)
        if isinstance(vocab, int) and any(not 0 <= t < vocab for t in ids):
            raise BadRequestError(
                f"input_ids hold token ids outside the vocabulary [0, {vocab})", stream_id=request.stream_id
            )
        if len(ids) > self.settings.limits.max_prompt_tokens:
            raise BadRequestError(
                f"the prompt has {len(ids)} tokens; the limit is {self.settings.limits.max_prompt_tokens}",
                stream_id=request.stream_id,
            )
        return ids

    async def _generate(self, ws: _WorkerStream) -> None:
        request = ws.request
        assert request is not None
        try:
            input_ids = await asyncio.to_thread(self._input_ids, request)
        except BadRequestError as exc:
            self.counters["rejected"] += 1
            for event in _rejection(ws.stream_id, exc.code, str(exc)):
                ws.append(event)
            return
        async with self._generate_lock:
            if ws.cancel_requested or self._closing:
                ws.append(
                    EndEvent(
                        stream_id=ws.stream_id,
                        seq=0,
                        finish_reason="cancelled",
                        usage=Usage(prompt_tokens=len(input_ids), completion_tokens=0, drafted=0, accepted=0),
                        text="",
                    )
                )
                return
            try:
                stream = self.hub.start(
                    self.generator,
                    input_ids,
                    tokenizer=self.tokenizer,
                    provisional=request.provisional,
                    stream_id=ws.stream_id,
                    **self._hub_names(),
                    **request.generate_kwargs(),
                )
            except ValueError as exc:  # InvalidArgumentError and friends: the request's fault
                self.counters["rejected"] += 1
                for event in _rejection(ws.stream_id, "bad_request", str(exc)[:500]):
                    ws.append(event)
                return
            ws.hub_stream = stream
            # A queue no burst can fill: the hub's overflow policy would merge commits and leave seq holes.
            async for event in stream.subscribe(max_queue=_COLLECT_QUEUE):
                ws.append(self._named(event))
            with contextlib.suppress(Exception):  # its error already reached the events
                await stream.result()

    def _hub_names(self) -> dict[str, Any]:
        """Model and draft names for the start event, if the hub takes them."""
        return {}

    def _named(self, event: Event) -> Event:
        """Fill in the start event's model / draft names when the hub left them unknown."""
        if isinstance(event, StartEvent) and self.settings.model_name != "unknown":
            if event.model != self.settings.model_name or event.draft != self.settings.draft_name:
                from dataclasses import replace

                return replace(event, model=self.settings.model_name, draft=self.settings.draft_name)
        return event

    # ------------------------------------------------------------------ publishing

    async def _publish_batch(self, topic: str, payloads: list[bytes]) -> int:
        """Publish in order; return how many from the start were acknowledged (waits out an outage)."""
        while True:
            await self._connected.wait()
            transport = self._transport
            if transport is None:
                continue
            results = await asyncio.gather(
                *(transport.publish(topic, p, qos=1, expiry_s=self.settings.event_expiry_s) for p in payloads),
                return_exceptions=True,
            )
            for i, result in enumerate(results):
                if isinstance(result, BaseException):
                    if not isinstance(result, TransportError):
                        raise result
                    if i == 0:
                        await asyncio.sleep(0.05)  # the connection is going down; wait for the next one
                        break
                    return i
            else:
                return len(payloads)

    async def _publish_log(self, ws: _WorkerStream) -> None:
        """Publish the stream's log as it grows, until it is finished and every entry acknowledged."""
        topic = events_topic(ws.stream_id)
        while True:
            if ws.published >= len(ws.entries):
                if ws.finished:
                    return
                ws.changed.clear()
                await ws.changed.wait()
                continue
            await self._connected.wait()
            transport = self._transport
            if transport is None:
                await asyncio.sleep(0.05)
                continue
            if not await self._pipeline(ws, topic, transport):
                await asyncio.sleep(0.05)  # the connection is going down; wait for the next one

    async def _pipeline(self, ws: _WorkerStream, topic: str, transport: Transport) -> bool:
        """Publish each entry the moment it is appended, keeping up to ``_PUBLISH_WINDOW`` unacknowledged.

        ``ws.published`` advances over the acknowledged prefix. Returns True once
        the stream is finished and all of it acknowledged, False when a publish
        failed or the connection went down (the caller retries from ``ws.published`` on the next connection;
        entries after it may reach subscribers twice, which QoS 1 allows).
        A new entry is handed to the transport without waiting for earlier
        acknowledgements, so an event's latency is one broker hop, not the
        round trip of the batch before it.
        """
        inflight: deque[asyncio.Future[None]] = deque()
        issued = ws.published

        def wake(_: object) -> None:
            ws.changed.set()

        try:
            while True:
                if self._transport is not transport:
                    # The connection went down. Its pending publishes may never complete (the client
                    # does not fail them), so retry from the acknowledged prefix on the next one.
                    return False
                while issued < len(ws.entries) and len(inflight) < _PUBLISH_WINDOW:
                    future = asyncio.ensure_future(
                        transport.publish(topic, ws.entries[issued][1], qos=1, expiry_s=self.settings.event_expiry_s)
                    )
                    future.add_done_callback(wake)
                    inflight.append(future)
                    issued += 1
                while inflight and inflight[0].done():
                    exc = inflight.popleft().exception()
                    if exc is not None:
                        if not isinstance(exc, TransportError):
                            raise exc
                        return False
                    ws.published += 1
                if ws.finished and ws.published >= len(ws.entries):
                    return True
                if issued < len(ws.entries) and len(inflight) < _PUBLISH_WINDOW:
                    continue
                ws.changed.clear()  # no await since the checks above: no wake-up can be lost
                await ws.changed.wait()
        finally:
            for future in inflight:
                future.cancel()
            if inflight:
                await asyncio.gather(*inflight, return_exceptions=True)

    def _request_replay(self, ws: _WorkerStream, after_seq: int) -> None:
        ws.replay_from = after_seq if ws.replay_from is None else min(ws.replay_from, after_seq)
        if ws.replay_task is None or ws.replay_task.done():
            ws.replay_task = self._spawn(self._replay(ws), f"replay-{ws.stream_id}")

    async def _replay(self, ws: _WorkerStream) -> None:
        topic = events_topic(ws.stream_id)
        while ws.replay_from is not None:
            after_seq, ws.replay_from = ws.replay_from, None
            upto = ws.published  # later entries are on their way through the publisher anyway
            payloads = [p for seq, p in ws.entries[:upto] if seq > after_seq]
            for start in range(0, len(payloads), _PUBLISH_BATCH):
                chunk = payloads[start : start + _PUBLISH_BATCH]
                done = 0
                while done < len(chunk):
                    done += await self._publish_batch(topic, chunk[done:])

    async def _publish_once(self, topic: str, payload: bytes) -> None:
        await self._publish_batch(topic, [payload])

    async def _guard(self, ws: _WorkerStream) -> None:
        """Hold a connection whose Will is ``worker_lost`` on this stream, until cancelled."""
        notice = ErrorEvent(
            stream_id=ws.stream_id,
            seq=OUT_OF_BAND_SEQ,
            code="worker_lost",
            message=f"worker {self.worker_id} serving this stream disconnected; the stream is lost",
            retryable=True,
        )
        will = WillSpec(
            topic=events_topic(ws.stream_id),
            payload=encode_event(notice),
            delay_s=self.settings.will_delay_s,
            expiry_s=self.settings.event_expiry_s,
        )
        delays = backoff_delays()
        while True:
            try:
                async with self._factory(
                    self.config,
                    client_id=f"specdec-guard-{self.worker_id}-{ws.stream_id}",
                    will=will,
                    session_expiry_s=self.settings.will_delay_s or None,
                ) as transport:
                    delays = backoff_delays()
                    async for _ in transport.messages():
                        pass
            except TransportError:
                pass
            await asyncio.sleep(next(delays))


async def serve(
    broker_url: str,
    gen: Any,
    tokenizer: Any,
    *,
    username: str | None = None,
    password: str | None = None,
    tls_ca: str | None = None,
    max_new_tokens_cap: int = 1024,
    model_name: str = "unknown",
    draft_name: str = "unknown",
    start_broker: bool = False,
    worker_id: str | None = None,
    settings: WorkerSettings | None = None,
) -> None:
    """Run one worker until cancelled (Ctrl-C under ``asyncio.run``).

    ``broker_url`` is ``mqtt://host:port`` or ``mqtts://host:port``. With
    ``start_broker=True`` a private mosquitto is started on the URL's loopback
    host and port first, and stopped on exit. ``settings`` overrides every
    other knob when given (``max_new_tokens_cap``, names, ``worker_id``).
    """
    config = BrokerConfig.from_url(broker_url, username=username, password=password, tls_ca=tls_ca)
    if settings is None:
        settings = WorkerSettings(
            model_name=model_name,
            draft_name=draft_name,
            worker_id=worker_id,
            limits=RequestLimits(
                max_new_tokens_cap=max_new_tokens_cap,
                default_max_new_tokens=min(256, max_new_tokens_cap),
            ),
        )
    broker = None
    if start_broker:
        from .broker import LocalMosquitto

        if config.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"--start-broker runs a local mosquitto; the broker URL must be loopback, not {config.host}"
            )
        broker = LocalMosquitto(port=config.port, host="127.0.0.1").start()
    try:
        await Worker(config, gen, tokenizer, settings=settings).run()
    finally:
        if broker is not None:
            broker.close()
