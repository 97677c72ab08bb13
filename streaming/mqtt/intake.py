"""The worker's intake: what to do with each request and control message, and the streams it tracks.

:meth:`Intake.admit` turns a request payload into one decision:

- :class:`Reject`: answer ``error`` (seq 0) + ``end(error)`` (seq 1) on the stream, when the payload names
  a valid stream id (else it is only logged); ``busy`` (retryable) beyond ``max_open_streams``;
- :class:`Duplicate`: the stream id is taken by another request: an out-of-band notice, the stream unharmed;
- :class:`Replay`: the same request again (a client re-sent it after a reconnect): replay, don't regenerate;
- :class:`Accept`: a new :class:`WorkerStream` to serve.

:meth:`Intake.control` routes a ``cancel`` / ``resume`` to the stream it names. :func:`encode_prompt`
tokenizes a request (in a thread; it may be slow) and :func:`closed_log` builds the event log of a stream
answered without generating (a rejection, or a cancellation before it started). No I/O here.
"""

from __future__ import annotations

import asyncio
import logging
import time
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
    """The request's prompt as token ids; :class:`BadRequestError` when it cannot be served."""
    try:
        if request.input_ids is not None:
            ids = request.input_ids
        elif request.messages is not None:
            ids = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
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
