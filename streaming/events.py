"""Token stream events, schema version 1 (see PROTOCOL.md / docs).

The same events flow in-process and over MQTT: dataclasses here, JSON on the
wire (:func:`event_to_dict` / :func:`event_from_dict`).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from specdec import FinishReason as CoreFinishReason

from .errors import EventDecodeError

__all__ = [
    "SCHEMA_VERSION",
    "STREAM_ID_PATTERN",
    "StartEvent",
    "CommitEvent",
    "ProvisionalEvent",
    "EndEvent",
    "ErrorEvent",
    "Event",
    "Usage",
    "FinishReason",
    "EventDecodeError",
    "event_to_dict",
    "event_from_dict",
    "validate_stream_id",
]

SCHEMA_VERSION = 1
STREAM_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")

# The core's finish reasons plus "error" (a stream can also end because generation failed).
# By reference, not a second list: a reason added to the core appears here too.
FinishReason = Literal[CoreFinishReason, "error"]


def validate_stream_id(stream_id: Any) -> str:
    """Return ``stream_id`` if it matches ``[A-Za-z0-9_-]{1,64}``, else raise ``ValueError``."""
    if not isinstance(stream_id, str) or not STREAM_ID_PATTERN.fullmatch(stream_id):
        raise ValueError(f"stream_id must match [A-Za-z0-9_-]{{1,64}}, got {stream_id!r}")
    return stream_id


@dataclass(frozen=True, kw_only=True)
class _Envelope:
    stream_id: str
    seq: int
    ts: float = field(default_factory=time.time)
    v: int = SCHEMA_VERSION


@dataclass(frozen=True, kw_only=True)
class StartEvent(_Envelope):
    model: str
    draft: str
    prompt_tokens: int
    params: dict[str, Any]
    type: Literal["start"] = "start"


@dataclass(frozen=True, kw_only=True)
class CommitEvent(_Envelope):
    token_ids: list[int]
    text: str
    n_committed: int  # total committed tokens after this event
    step: int
    drafted: int
    accepted: int
    type: Literal["commit"] = "commit"


@dataclass(frozen=True, kw_only=True)
class ProvisionalEvent(_Envelope):
    base: int  # the n_committed this draft extends
    token_ids: list[int]
    text: str
    type: Literal["provisional"] = "provisional"


@dataclass(frozen=True, kw_only=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    drafted: int
    accepted: int


@dataclass(frozen=True, kw_only=True)
class EndEvent(_Envelope):
    finish_reason: FinishReason
    usage: Usage
    text: str
    type: Literal["end"] = "end"


@dataclass(frozen=True, kw_only=True)
class ErrorEvent(_Envelope):
    code: str  # bad_request, slow_consumer, worker_lost, internal, ...
    message: str
    retryable: bool = False
    type: Literal["error"] = "error"


Event = StartEvent | CommitEvent | ProvisionalEvent | EndEvent | ErrorEvent

_TYPES: dict[str, type] = {
    "start": StartEvent,
    "commit": CommitEvent,
    "provisional": ProvisionalEvent,
    "end": EndEvent,
    "error": ErrorEvent,
}


def event_to_dict(event: Event) -> dict[str, Any]:
    """The JSON-ready dict of an event (``usage`` as a nested dict)."""
    return asdict(event)


def event_from_dict(data: Any) -> Event:
    """Parse a dict into an event, checking the version, type and fields."""
    if not isinstance(data, dict):
        raise EventDecodeError(f"an event must be a JSON object, got {type(data).__name__}")
    if data.get("v") != SCHEMA_VERSION:
        raise EventDecodeError(f"unsupported event schema version {data.get('v')!r} (expected {SCHEMA_VERSION})")
    cls = _TYPES.get(str(data.get("type")))
    if cls is None:
        raise EventDecodeError(f"unknown event type {data.get('type')!r}")
    fields = dict(data)
    fields.pop("type")
    if cls is EndEvent and isinstance(fields.get("usage"), dict):
        try:
            fields["usage"] = Usage(**fields["usage"])
        except TypeError as exc:
            raise EventDecodeError(f"bad usage in end event: {exc}") from exc
    try:
        return cls(**fields)
    except TypeError as exc:
        raise EventDecodeError(f"bad {data.get('type')} event: {exc}") from exc
