"""The MQTT worker: takes requests from the broker, generates, publishes each stream's events.

One worker holds one loaded :class:`specdec.SpeculativeGenerator`; any number
of streams can be open at once (queued, generating, or finished and lingering
for resumes). Up to the engine's capacity generate at once (:func:`engine_capacity`:
the generator's ``max_batch_rows`` when its streams share one engine, else 1);
the rest wait in the worker's queue (:class:`~.intake.Slots`) and hear their
position through out-of-band ``queued`` notices; beyond the queue, ``busy``.
N workers share requests through the MQTT 5 shared subscription
``$share/specdec/specdec/v1/requests``.

Strangers on the broker (docs/mqtt.md, "Threat model"): the worker's and its
guards' client ids carry a secret of this process (no takeover, no false Will);
a ``cancel`` is obeyed only with the token of the stream's request; replays are
coalesced and rate-limited per stream (:mod:`.publisher`).

The rooms (each its own module):

- :mod:`.intake`: what to do with a request or control message (accept, reject, replay, duplicate);
- :class:`specdec.streaming.StreamHub`: generation, numbering, detokenizing; each stream's
  :class:`~specdec.streaming.EventLog` is also the worker's replay store (no copy);
- :mod:`.publisher`: publishes a log QoS 1 with a message expiry, losslessly, and replays it on ``resume``;
- :mod:`.guards`: one Will connection per accepted stream, so a dead worker's streams get ``worker_lost``;
- :mod:`.connection`: the reconnecting connection (the worker's, each guard's, and the client's).

The worker's main connection has a Will too: a retained ``{"state": "lost"}``
on ``specdec/v1/workers/{worker_id}/status`` for operators (``"online"`` while
serving, ``"offline"`` with ``"reason": "stopped"`` after a graceful stop).

Stopping. ``worker.stop()`` (plain method, safe in a ``loop.add_signal_handler``
callback) or cancelling the task that runs :meth:`Worker.run` stops the worker
gracefully: it stops taking requests (a late request is answered with a
retryable ``unavailable`` error), cancels every open stream so each subscriber
gets ``end(finish_reason="cancelled")`` (or the stream's real end, or an
``error`` then ``end``), waits up to ``shutdown_timeout_s`` for those events to
be acknowledged by the broker, disconnects the guards cleanly (no Will fires),
publishes the ``offline`` status, and returns (``run`` returns after ``stop()``;
it re-raises ``CancelledError`` after a cancel). ``worker.status`` is then
``"stopped"``. ``await worker.close()`` does the same and waits.

Example (:func:`specdec.streaming.mqtt.serve` wraps this, with signals and an optional local broker)::

    async with Worker("mqtt://127.0.0.1:1883", generator, tokenizer, settings=WorkerSettings(model_name="tiny")):
        await stop_requested.wait()        # leaving the block stops the worker gracefully
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from typing import Any

from ..events import EndEvent, ErrorEvent, Usage
from .connection import Connection, Session
from .errors import BadRequestError, TransportError
from .guards import Guards
from .intake import (
    Accept,
    Duplicate,
    Intake,
    Reject,
    Replay,
    Slots,
    WorkerStream,
    closed_log,
    encode_prompt,
    rejection_events,
)
from .protocol import (
    CONTROL_WILDCARD,
    OUT_OF_BAND_SEQ,
    SHARED_REQUEST_TOPIC,
    QueuedEvent,
    encode_event,
    encode_json,
    encode_queued,
    events_topic,
    stream_id_from_topic,
    worker_status_topic,
)
from .publisher import LogPublisher
from .settings import WorkerSettings
from .transport import BrokerConfig, Message, TransportFactory, WillSpec, connect

__all__ = ["WorkerSettings", "Worker"]

log = logging.getLogger(__name__)

_PUBLISH_WINDOW = 1000  # unacknowledged event publishes per stream (the transport's in-flight window)


def engine_capacity(generator: Any) -> int:
    """How many streams ``generator`` advances at once: its ``max_batch_rows`` when its ``generate`` calls
    share one engine (``concurrent_generate``), else 1 (the hub runs them one after another)."""
    if getattr(generator, "concurrent_generate", False):
        rows = getattr(generator, "max_batch_rows", None)
        if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 1:
            return rows
    return 1


class _Stopped(Exception):
    """Raised inside the worker's task group once the graceful shutdown is done: ends the group."""


class Worker:
    """Serve generation requests from an MQTT broker until stopped.

    ``async with Worker(...) as worker:`` runs it in a background task and
    returns once it is connected and subscribed (``worker.ready``); leaving the
    block stops it gracefully (see the module docstring). ``worker.status``:
    ``"new"``, ``"connecting"``, ``"online"``, ``"stopping"``, ``"stopped"``.
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
        self.settings = s = settings or WorkerSettings()
        self.worker_id = s.worker_id or uuid.uuid4().hex[:12]
        if hub is None:
            from ..hub import StreamHub  # the in-process layer this worker publishes

            hub = StreamHub(retention_s=s.linger_s)  # its logs are the replay store
        self.hub = hub
        # Streams generating at once, and the busy threshold: the engine's real capacity plus a bounded queue.
        self.capacity = s.max_running_streams or engine_capacity(generator)
        self.max_open_streams = s.max_open_streams or self.capacity + s.max_queued_streams
        self.slots = Slots(self.capacity, self._announce_queued)
        # Client ids carry a secret that never leaves this process: nobody else can name (and take over)
        # the worker's or a guard's connection, which would fire its Will (docs/mqtt.md, "Threat model").
        self._secret = secrets.token_hex(16)
        self.intake = Intake(
            s.limits,
            max_open_streams=self.max_open_streams,
            max_tracked_streams=s.max_tracked_streams,
            linger_s=s.linger_s,
        )
        self.guards = Guards(
            self.config,
            worker_id=self.worker_id,
            factory=transport_factory,
            will_delay_s=s.will_delay_s,
            event_expiry_s=s.event_expiry_s,
            secret=self._secret,
        )
        self.status_topic = worker_status_topic(self.worker_id)
        self.connection = Connection(
            self.config,
            client_id=f"specdec-worker-{self.worker_id}-{self._secret}",
            factory=transport_factory,
            will=WillSpec(
                topic=self.status_topic,
                payload=encode_json({"v": 1, "worker_id": self.worker_id, "state": "lost"}),
                retain=True,
                delay_s=s.will_delay_s,
            ),
            session_expiry_s=s.will_delay_s or None,
            topics=lambda: (SHARED_REQUEST_TOPIC, CONTROL_WILDCARD),
            on_message=self._on_message,
            on_connect=self._on_connect,
            label=f"worker {self.worker_id}",
        )
        self.ready = asyncio.Event()
        self.status = "new"
        self.counters = {
            "requests": 0, "rejected": 0, "served": 0, "reconnects": 0, "controls": 0, "refused_controls": 0,
        }
        self._tg: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._finished = asyncio.Event()  # set whenever a stream finishes (for the shutdown wait)
        self._runner: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Worker:
        self._runner = asyncio.create_task(self.run(), name=f"specdec-worker-{self.worker_id}")
        ready = asyncio.create_task(self.ready.wait())
        try:
            await asyncio.wait({ready, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._runner.done():
            self._runner.result()  # raises what run() raised
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stop(self) -> None:
        """Ask :meth:`run` to stop gracefully and return. Safe to call from a signal handler on the loop."""
        self._stop.set()

    async def close(self) -> None:
        """Stop gracefully and wait until the worker (started with ``async with``) has stopped."""
        self.stop()
        runner, self._runner = self._runner, None
        if runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    async def run(self) -> None:
        """Connect, serve, and reconnect with jittered backoff, until :meth:`stop` or cancelled (both graceful)."""
        cancelled = False
        self.status = "connecting"
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.connection.run(), name=f"specdec-worker-{self.worker_id}-connection")
                try:
                    await self._stop.wait()
                except asyncio.CancelledError:
                    cancelled = True
                await self._shutdown()
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            self._tg = None
            self.ready.clear()
            self.status = "stopped"
            log.info("worker %s stopped", self.worker_id)
        if cancelled:
            raise asyncio.CancelledError

    async def _on_connect(self, session: Session) -> None:
        await session.transport.publish(self.status_topic, self._status("online"), retain=True)
        self.counters["reconnects"] = self.connection.reconnects
        if not self._stopping:
            self.status = "online"
        self.ready.set()
        log.info("worker %s connected to %s", self.worker_id, self.connection.where)

    async def _shutdown(self) -> None:
        """End every open stream, wait (bounded) for its events to be acknowledged, say offline."""
        self._stopping = True
        self.status = "stopping"
        open_streams = self.intake.open_streams()
        for ws in open_streams:
            ws.cancel_requested = True
            self.slots.leave(ws)  # a queued stream ends at once with end(cancelled)
        cancels = [ws.hub_stream.cancel() for ws in open_streams if ws.hub_stream is not None]
        try:
            async with asyncio.timeout(self.settings.shutdown_timeout_s):
                await asyncio.gather(*cancels)
                while self.intake.open_streams():  # each finishes once its end is acknowledged and its guard closed
                    self._finished.clear()
                    await self._finished.wait()
        except TimeoutError:
            left = [ws.stream_id for ws in self.intake.open_streams()]
            log.warning("worker %s: %d streams not flushed within the shutdown timeout: %s", self.worker_id,
                        len(left), left[:10])
        session = self.connection.session
        if session is not None:
            with contextlib.suppress(TransportError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await session.transport.publish(self.status_topic, self._status("offline"), retain=True)

    def _status(self, state: str) -> bytes:
        payload = {
            "v": 1,
            "worker_id": self.worker_id,
            "state": state,
            "model": self.settings.model_name,
            "draft": self.settings.draft_name,
            "ts": time.time(),
        }
        if state == "offline":
            payload["reason"] = "stopped"
        return encode_json(payload)

    def _spawn(self, coro: Any, name: str) -> None:
        assert self._tg is not None, "the worker is not running"
        self._tg.create_task(coro, name=name)

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
        decision = self.intake.admit(payload)
        if self._stopping and isinstance(decision, Accept):
            del self.intake.streams[decision.stream.stream_id]
            decision = Reject(decision.stream.stream_id, "unavailable", "this worker is stopping; retry",
                              bytes(payload), retryable=True)
        if isinstance(decision, Accept):
            ws = decision.stream
            self._spawn(self._serve(ws), f"stream-{ws.stream_id}")
        elif isinstance(decision, Replay):
            self._replay(decision.stream, -1)  # the client re-sent its request: replay, don't regenerate
        elif isinstance(decision, Duplicate):
            self.counters["rejected"] += 1
            sid = decision.stream_id
            notice = ErrorEvent(
                stream_id=sid,
                seq=OUT_OF_BAND_SEQ,
                code="duplicate_stream",
                message=f"stream_id {sid} is taken by another request; pick a fresh id",
            )
            self._spawn(
                self.connection.publish(events_topic(sid), encode_event(notice), expiry_s=self.settings.event_expiry_s),
                f"notice-{sid}",
            )
        else:
            self._reject(decision)

    def _reject(self, decision: Reject) -> None:
        self.counters["rejected"] += 1
        log.info("worker %s: rejected a request (%s: %s)", self.worker_id, decision.code, decision.message)
        if decision.stream_id is None:
            return  # nowhere to answer
        ws = self.intake.track_rejection(decision.stream_id, decision.payload)
        if ws is None:
            return  # never write a second seq 0 into a stream that exists
        events = rejection_events(ws.stream_id, decision.code, decision.message, retryable=decision.retryable)
        self._attach(ws, closed_log(events))
        self._spawn(self._publish_only(ws), f"reject-{ws.stream_id}")

    def _on_control(self, message: Message) -> None:
        routed = self.intake.control(stream_id_from_topic(message.topic), message.payload)
        if routed is None:
            return
        ws, command = routed
        self.counters["controls"] += 1
        if command.type == "cancel":
            if not self.intake.may_cancel(ws, command):  # only the requester, who holds the stream's token
                self.counters["refused_controls"] += 1
                log.info("worker %s: ignored a cancel for %s without its token", self.worker_id, ws.stream_id)
                return
            ws.cancel_requested = True
            self.slots.leave(ws)
            if ws.hub_stream is not None and not ws.hub_stream.done:
                self._spawn(ws.hub_stream.cancel(), f"cancel-{ws.stream_id}")
        else:
            self._replay(ws, command.after_seq)

    def _replay(self, ws: WorkerStream, after_seq: int) -> None:
        position = self.slots.position(ws)
        if position is not None:
            now = time.monotonic()
            if now - ws.queued_notice_at >= self.settings.replay_window_s:  # rate-limited like replays
                ws.queued_notice_at = now
                self._announce_queued(ws, position)  # still waiting: say where
        elif ws.publisher is not None and ws.publisher.want_replay(after_seq):
            self._spawn(ws.publisher.replay(), f"replay-{ws.stream_id}")

    def _announce_queued(self, ws: WorkerStream, position: int) -> None:
        notice = encode_queued(QueuedEvent(stream_id=ws.stream_id, position=position))
        self._spawn(
            self.connection.publish(events_topic(ws.stream_id), notice, expiry_s=self.settings.event_expiry_s),
            f"queued-{ws.stream_id}",
        )

    # ------------------------------------------------------------------ one stream

    def _attach(self, ws: WorkerStream, event_log: Any) -> None:
        ws.publisher = LogPublisher(
            self.connection,
            event_log,
            events_topic(ws.stream_id),
            expiry_s=self.settings.event_expiry_s,
            window=_PUBLISH_WINDOW,
            replay_window_s=self.settings.replay_window_s,
        )

    def _done(self, ws: WorkerStream) -> None:
        ws.finished_at = time.monotonic()
        self._finished.set()

    async def _publish_only(self, ws: WorkerStream) -> None:
        try:
            assert ws.publisher is not None
            await ws.publisher.run()
        finally:
            self._done(ws)

    async def _serve(self, ws: WorkerStream) -> None:
        """Open the stream (tokenize, start it on the hub), publish it to the end, under its guard."""
        try:
            async with asyncio.TaskGroup() as tg:
                guard = None
                if self.settings.guards:
                    guard = tg.create_task(self.guards.hold(ws.stream_id), name=f"guard-{ws.stream_id}")
                try:
                    if await self._open(ws):
                        tg.create_task(self._free_slot_when_done(ws), name=f"slot-{ws.stream_id}")
                    assert ws.publisher is not None
                    await ws.publisher.run()
                finally:  # even if publishing failed: a guard left open would keep the stream's Will armed
                    if guard is not None:
                        guard.cancel()  # clean DISCONNECT: the broker drops this stream's Will
        except Exception:  # noqa: BLE001 - one stream's failure must not stop the worker
            log.exception("worker %s: stream %s failed", self.worker_id, ws.stream_id)
        finally:
            self._done(ws)
        self.counters["served"] += 1

    async def _free_slot_when_done(self, ws: WorkerStream) -> None:
        """Give the generation slot back once the stream's generation ended (not when it is published)."""
        try:
            with contextlib.suppress(Exception):
                await ws.hub_stream.result()
        finally:
            self.slots.release()

    async def _open(self, ws: WorkerStream) -> bool:
        """Tokenize, wait for a generation slot, start the stream on the hub. True when it holds a slot."""
        request = ws.request
        assert request is not None
        vocab = getattr(getattr(self.generator, "target", None), "vocab_size", None)
        try:
            input_ids = await asyncio.to_thread(encode_prompt, self.tokenizer, request, self.settings.limits, vocab)
        except BadRequestError as exc:
            self.counters["rejected"] += 1
            self._attach(ws, closed_log(rejection_events(ws.stream_id, exc.code, str(exc))))
            return False
        slot = False
        if not (ws.cancel_requested or self._stopping):
            slot = await self.slots.acquire(ws)  # queued beyond the engine's capacity, with `queued` notices
        if ws.cancel_requested or self._stopping:
            if slot:
                self.slots.release()
            usage = Usage(prompt_tokens=len(input_ids), completion_tokens=0, drafted=0, accepted=0)
            end = EndEvent(stream_id=ws.stream_id, seq=0, finish_reason="cancelled", usage=usage, text="")
            self._attach(ws, closed_log([end]))
            return False
        names = {
            "model_name": None if self.settings.model_name == "unknown" else self.settings.model_name,
            "draft_name": None if self.settings.model_name == "unknown" else self.settings.draft_name,
        }
        try:
            stream = self.hub.start(
                self.generator,
                input_ids,
                tokenizer=self.tokenizer,
                provisional=request.provisional,
                stream_id=ws.stream_id,
                **names,
                **request.generate_kwargs(),
            )
        except ValueError as exc:  # InvalidArgumentError and friends: the request's fault
            self.slots.release()
            self.counters["rejected"] += 1
            self._attach(ws, closed_log(rejection_events(ws.stream_id, "bad_request", str(exc)[:500])))
            return False
        except BaseException:
            self.slots.release()
            raise
        ws.hub_stream = stream
        self._attach(ws, stream.log)
        return True
