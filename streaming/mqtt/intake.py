"""The worker's intake: what to do with each request and control message, and the streams it tracks.

:meth:`Intake.admit` turns a request payload into one decision:

- :class:`Reject`: answer ``error`` (seq 0) + ``end(error)`` (seq 1) on the stream, when the payload names
  a valid stream id (else it is only logged); ``busy`` (retryable) beyond ``max_open_streams``;
- :class:`Duplicate`: the stream id is taken by another request: an out-of-band notice, the stream unharmed;
- :class:`Replay`: the same request again (a client re-sent it after a reconnect): replay, don't regenerate;
- :class:`Accept`: a new :class:`WorkerStream` to serve.

:meth:`Intake.control` routes a ``cancel`` / ``resume`` to the stream it names, and
:meth:`Intake.may_cancel` says whether a ``cancel`` carries the stream's capability token. :class:`Slots`
queues streams beyond the engine's capacity, in order, and knows each one's position.
:func:`encode_prompt` tokenizes a request (in a thread; it may be slow; user text never becomes special
tokens) and :func:`closed_log` builds the event log of a stream answered without generating (a
rejection, or a cancellation before it started). No I/O here.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._log import EventLog
from ..events import EndEvent, ErrorEvent, Event, Usage
from .errors import BadRequestError
from .protocol import ControlCommand, GenerationRequest, RequestLimits, parse_control, parse_request
from .publisher import LogPublisher

__all__ = [
    "Intake",
    "WorkerStream",
    "Accept",
    "Reject",
    "Duplicate",
    "Replay",
    "Slots",
    "encode_prompt",
    "closed_log",
    "rejection_events",
]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class WorkerStream:
    """One stream a worker serves or served: the request, and once opened its log and publisher."""

    stream_id: str
    payload: bytes  # the raw request, to recognize an idempotent re-send
    request: GenerationRequest | None
    publisher: LogPublisher | None = None  # set once the stream's log exists
    hub_stream: Any = None  # the hub's Stream, when generating
    cancel_requested: bool = False
    finished_at: float | None = None  # when its publisher finished (monotonic)
    queued_notice_at: float = -float("inf")  # when a resume last got its `queued` notice (monotonic)

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


@dataclass(frozen=True)
class Accept:
    stream: WorkerStream


@dataclass(frozen=True)
class Reject:
    stream_id: str | None  # None: nowhere to answer
    code: str
    message: str
    payload: bytes
    retryable: bool = False


@dataclass(frozen=True)
class Duplicate:
    stream_id: str


@dataclass(frozen=True)
class Replay:
    stream: WorkerStream


Admission = Accept | Reject | Duplicate | Replay


class Intake:
    """The streams a worker knows (open, and finished within ``linger_s``), and the admission rules."""

    def __init__(
        self, limits: RequestLimits, *, max_open_streams: int, max_tracked_streams: int, linger_s: float
    ) -> None:
        self.limits = limits
        self.max_open_streams = max_open_streams
        self.max_tracked_streams = max_tracked_streams
        self.linger_s = linger_s
        self.streams: dict[str, WorkerStream] = {}

    def open_streams(self) -> list[WorkerStream]:
        return [ws for ws in self.streams.values() if not ws.finished]

    def admit(self, payload: bytes) -> Admission:
        self.prune()
        payload = bytes(payload)
        try:
            request = parse_request(payload, self.limits)
        except BadRequestError as exc:
            return Reject(exc.stream_id, exc.code, str(exc), payload)
        existing = self.streams.get(request.stream_id)
        if existing is not None:
            return Replay(existing) if existing.payload == payload else Duplicate(request.stream_id)
        if len(self.open_streams()) >= self.max_open_streams:
            return Reject(
                request.stream_id,
                "busy",
                f"this worker has {self.max_open_streams} open streams; retry later",
                payload,
                retryable=True,
            )
        ws = WorkerStream(request.stream_id, payload, request)
        self.streams[ws.stream_id] = ws
        return Accept(ws)

    def track_rejection(self, stream_id: str, payload: bytes) -> WorkerStream | None:
        """A stream to answer a rejection on; ``None`` if the id exists (never write a second seq 0)."""
        if stream_id in self.streams:
            return None
        ws = WorkerStream(stream_id, payload, None)
        self.streams[stream_id] = ws
        return ws

    def control(self, stream_id: str | None, payload: bytes) -> tuple[WorkerStream, ControlCommand] | None:
        """The stream and command of a control message; ``None`` for another worker's stream or a bad one."""
        ws = self.streams.get(stream_id) if stream_id else None
        if ws is None:
            return None  # another worker's stream, or one long gone
        try:
            return ws, parse_control(payload)
        except BadRequestError as exc:
            log.info("bad control message for %s (%s)", stream_id, exc)
            return None

    @staticmethod
    def may_cancel(ws: WorkerStream, command: ControlCommand) -> bool:
        """A ``cancel`` obeys only the requester: it must carry the token the request gave (none: nobody)."""
        expected = ws.request.token if ws.request is not None else None
        if expected is None or command.token is None:
            return False
        return hmac.compare_digest(expected.encode(), command.token.encode())

    def prune(self) -> None:
        """Forget streams finished more than ``linger_s`` ago, and the oldest beyond ``max_tracked_streams``."""
        now = time.monotonic()
        done = [ws for ws in self.streams.values() if ws.finished_at is not None]
        expired = {ws.stream_id for ws in done if now - ws.finished_at > self.linger_s}  # type: ignore[operator]
        overflow = len(self.streams) - len(expired) - self.max_tracked_streams
        if overflow > 0:
            rest = sorted((ws for ws in done if ws.stream_id not in expired), key=lambda ws: ws.finished_at or 0.0)
            expired.update(ws.stream_id for ws in rest[:overflow])
        for stream_id in expired:
            del self.streams[stream_id]


class Slots:
    """At most ``capacity`` streams generate at once; the rest wait in arrival order.

    ``await slots.acquire(ws)`` returns at once while a slot is free, else queues ``ws`` and calls
    ``on_moved(ws, position)`` (1 = next) now and whenever its position changes; :meth:`release` frees a
    slot and starts the next waiter. :meth:`leave` takes a waiting stream out of the queue (a cancel):
    its ``acquire`` returns False. Cancelling the awaiting task leaves the queue too.
    """

    def __init__(self, capacity: int, on_moved: Callable[[WorkerStream, int], None]) -> None:
        self.capacity = capacity
        self.running = 0
        self._waiting: list[tuple[WorkerStream, asyncio.Future[bool]]] = []
        self._on_moved = on_moved

    def position(self, ws: WorkerStream) -> int | None:
        """1-based place in the queue, or ``None`` when ``ws`` is not waiting."""
        for i, (other, _) in enumerate(self._waiting):
            if other is ws:
                return i + 1
        return None

    async def acquire(self, ws: WorkerStream) -> bool:
        if self.running < self.capacity and not self._waiting:
            self.running += 1
            return True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((ws, future))
        self._on_moved(ws, len(self._waiting))
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.result():
                self.release()  # granted and cancelled in the same turn: hand the slot on
            else:
                self.leave(ws)  # the ones behind it move up
            raise

    def release(self) -> None:
        self.running -= 1
        moved = False
        while self._waiting and self.running < self.capacity:
            _, future = self._waiting.pop(0)
            if not future.done():
                self.running += 1
                future.set_result(True)
                moved = True
        if moved:
            self._announce()

    def leave(self, ws: WorkerStream) -> bool:
        """Take ``ws`` out of the queue (its ``acquire`` returns False); False if it was not waiting."""
        for i, (other, future) in enumerate(self._waiting):
            if other is ws:
                del self._waiting[i]
                if not future.done():
                    future.set_result(False)
                self._announce(start=i)
                return True
        return False

    def _announce(self, start: int = 0) -> None:
        for i, (other, _) in enumerate(self._waiting[start:], start=start):
            self._on_moved(other, i + 1)


def rejection_events(stream_id: str, code: str, message: str, *, retryable: bool = False) -> list[Event]:
    """``error`` (seq 0) and ``end(error)`` (seq 1): the whole stream of a request that is not served."""
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


def closed_log(events: list[Event]) -> EventLog:
    """A complete event log for a stream answered without generating."""
    log_ = EventLog(asyncio.get_running_loop())
    for event in events:
        log_.append(event)
    log_.mark_released()
    return log_


def encode_prompt(
    tokenizer: Any, request: GenerationRequest, limits: RequestLimits, vocab_size: int | None
) -> list[int]:
    """The request's prompt as token ids; :class:`BadRequestError` when it cannot be served.

    User text never becomes special tokens: a ``prompt`` is tokenized with special-token parsing off
    (``split_special_tokens=True``; the tokenizer's own BOS is still added), and ``messages`` go through
    ``apply_chat_template(..., sanitize_control_tokens=True)``, which encodes the control tokens found
    in message text (``<|im_start|>``...) as plain text and only those the template writes as tokens.
    """
    try:
        if request.input_ids is not None:
            ids = request.input_ids
        elif request.messages is not None:
            ids = tokenizer.apply_chat_template(
                request.messages, add_generation_prompt=True, tokenize=True, sanitize_control_tokens=True
            )
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(request.prompt, add_special_tokens=True, split_special_tokens=True)["input_ids"]
    except Exception as exc:  # noqa: BLE001 - e.g. no chat template
        raise BadRequestError(f"cannot tokenize the prompt: {str(exc)[:300]}", stream_id=request.stream_id) from exc
    ids = list(ids)
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    if not ids:
        raise BadRequestError("the prompt tokenizes to nothing", stream_id=request.stream_id)
    if isinstance(vocab_size, int) and any(not 0 <= t < vocab_size for t in ids):
        raise BadRequestError(
            f"input_ids hold token ids outside the vocabulary [0, {vocab_size})", stream_id=request.stream_id
        )
    if len(ids) > limits.max_prompt_tokens:
        raise BadRequestError(
            f"the prompt has {len(ids)} tokens; the limit is {limits.max_prompt_tokens}", stream_id=request.stream_id
        )
    return ids
