"""Wire protocol v1: topics, request and control parsing, event encoding.

Everything a worker receives goes through :func:`parse_request` or
:func:`parse_control`, which either return a validated, typed value or raise
:class:`~specdec.streaming.mqtt.errors.BadRequestError` (never anything else: the
parser is fuzzed). See ``docs/mqtt.md`` for the protocol written out.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..events import STREAM_ID_PATTERN, Event, event_from_dict
from .errors import BadRequestError

__all__ = [
    "TOPIC_ROOT",
    "REQUEST_TOPIC",
    "SHARED_GROUP",
    "SHARED_REQUEST_TOPIC",
    "CONTROL_WILDCARD",
    "WORKER_STATUS_WILDCARD",
    "OUT_OF_BAND_SEQ",
    "events_topic",
    "control_topic",
    "worker_status_topic",
    "stream_id_from_topic",
    "RequestLimits",
    "GenerationRequest",
    "ControlCommand",
    "parse_request",
    "parse_control",
    "encode_event",
    "decode_event",
    "encode_json",
]

TOPIC_ROOT = "specdec/v1"
REQUEST_TOPIC = f"{TOPIC_ROOT}/requests"
SHARED_GROUP = "specdec"
SHARED_REQUEST_TOPIC = f"$share/{SHARED_GROUP}/{REQUEST_TOPIC}"
CONTROL_WILDCARD = f"{TOPIC_ROOT}/streams/+/control"
WORKER_STATUS_WILDCARD = f"{TOPIC_ROOT}/workers/+/status"

# ``seq`` of an out-of-band notice: an ``error`` that is not part of the stream's
# sequence because it was written before the stream's events existed (the
# worker's per-stream Will, ``worker_lost``) or concerns another request
# (``duplicate_stream``). See docs/mqtt.md, "Out-of-band errors".
OUT_OF_BAND_SEQ = -1


def events_topic(stream_id: str) -> str:
    return f"{TOPIC_ROOT}/streams/{stream_id}/events"


def control_topic(stream_id: str) -> str:
    return f"{TOPIC_ROOT}/streams/{stream_id}/control"


def worker_status_topic(worker_id: str) -> str:
    return f"{TOPIC_ROOT}/workers/{worker_id}/status"


def stream_id_from_topic(topic: str) -> str | None:
    """``specdec/v1/streams/{id}/events|control`` -> ``id`` (None for any other topic or a bad id)."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "specdec" or parts[1] != "v1" or parts[2] != "streams":
        return None
    return parts[3] if STREAM_ID_PATTERN.fullmatch(parts[3]) else None


@dataclass(frozen=True, kw_only=True)
class RequestLimits:
    """What a worker accepts. Requests beyond a limit get ``error(code="bad_request")``."""

    max_new_tokens_cap: int = 1024
    default_max_new_tokens: int = 256  # when the request names none (capped by max_new_tokens_cap)
    max_payload_bytes: int = 1_000_000
    max_prompt_chars: int = 100_000
    max_prompt_tokens: int = 32_768
    max_messages: int = 512

    def __post_init__(self) -> None:
        for name in ("max_new_tokens_cap", "default_max_new_tokens", "max_payload_bytes", "max_prompt_chars",
                     "max_prompt_tokens", "max_messages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RequestLimits.{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class GenerationRequest:
    """A validated request. Exactly one of ``prompt`` / ``messages`` / ``input_ids`` is set."""

    stream_id: str
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    input_ids: list[int] | None = None
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    provisional: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SpeculativeGenerator.generate`` (unset options left out)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        for name in ("temperature", "top_p", "top_k", "seed"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = value
        return kwargs


@dataclass(frozen=True)
class ControlCommand:
    type: Literal["cancel", "resume"]
    after_seq: int = -1  # resume: replay every event with seq > after_seq (-1 = from the start)


_REQUEST_FIELDS = {
    "v", "stream_id", "prompt", "messages", "input_ids", "max_new_tokens", "do_sample",
    "temperature", "top_p", "top_k", "seed", "provisional",
}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(payload: Any, limit: int, what: str) -> Any:
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    if not isinstance(payload, (bytes, bytearray)):
        raise BadRequestError(f"{what} payload must be bytes")
    if len(payload) > limit:
        raise BadRequestError(f"{what} is {len(payload)} bytes; the limit is {limit}")
    try:
        text = bytes(payload).decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequestError(f"{what} is not valid UTF-8 JSON: {str(exc)[:200]}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def parse_request(payload: bytes | str, limits: RequestLimits | None = None) -> GenerationRequest:
    """Validate a request payload; raise :class:`BadRequestError` (with ``stream_id`` when it is known)."""
    limits = limits or RequestLimits()
    data = _load_json(payload, limits.max_payload_bytes, "request")
    if not isinstance(data, dict):
        raise BadRequestError(f"a request must be a JSON object, got {type(data).__name__}")
    raw_id = data.get("stream_id")
    if raw_id is None:
        raise BadRequestError("request lacks `stream_id`")
    if not isinstance(raw_id, str) or not STREAM_ID_PATTERN.fullmatch(raw_id):
        raise BadRequestError(f"stream_id must match [A-Za-z0-9_-]{{1,64}}, got {str(raw_id)[:80]!r}")
    stream_id = raw_id

    def bad(message: str) -> BadRequestError:
        return BadRequestError(message, stream_id=stream_id)

    unknown = sorted(str(k)[:40] for k in data if k not in _REQUEST_FIELDS)
    if unknown:
        raise bad(f"unknown request fields {unknown[:5]}; allowed: {sorted(_REQUEST_FIELDS)}")
    if "v" in data and data["v"] != 1:
        raise bad(f"unsupported protocol version {data['v']!r} (this worker speaks v=1)")

    sources = [k for k in ("prompt", "messages", "input_ids") if data.get(k) is not None]
    if len(sources) != 1:
        raise bad(f"give exactly one of `prompt`, `messages`, `input_ids` (got {sources or 'none'})")
    prompt = messages = input_ids = None
    if sources[0] == "prompt":
        prompt = data["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise bad("`prompt` must be a non-empty string")
        if len(prompt) > limits.max_prompt_chars:
            raise bad(f"`prompt` has {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
    elif sources[0] == "messages":
        messages = data["messages"]
        if not isinstance(messages, list) or not messages:
            raise bad("`messages` must be a non-empty list of {\"role\": str, \"content\": str}")
        if len(messages) > limits.max_messages:
            raise bad(f"`messages` has {len(messages)} entries; the limit is {limits.max_messages}")
        total = 0
        for i, message in enumerate(messages):
            if (
                not isinstance(message, dict)
                or set(message) != {"role", "content"}
                or not isinstance(message["role"], str)
                or not isinstance(message["content"], str)
            ):
                raise bad(f"`messages[{i}]` must be {{\"role\": str, \"content\": str}}")
            total += len(message["content"])
        if total > limits.max_prompt_chars:
            raise bad(f"`messages` hold {total} characters; the limit is {limits.max_prompt_chars}")
        messages = [dict(m) for m in messages]
    else:
        input_ids = data["input_ids"]
        if not isinstance(input_ids, list) or not input_ids:
            raise bad("`input_ids` must be a non-empty list of non-negative integers")
        if len(input_ids) > limits.max_prompt_tokens:
            raise bad(f"`input_ids` has {len(input_ids)} tokens; the limit is {limits.max_prompt_tokens}")
        if not all(_is_int(t) and 0 <= t < 2**31 for t in input_ids):
            raise bad("`input_ids` must be a non-empty list of non-negative integers")
        input_ids = list(input_ids)

    max_new_tokens = data.get("max_new_tokens")
    if max_new_tokens is None:
        max_new_tokens = min(limits.default_max_new_tokens, limits.max_new_tokens_cap)
    elif not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise bad(f"`max_new_tokens` must be an integer >= 1, got {str(max_new_tokens)[:40]}")
    elif max_new_tokens > limits.max_new_tokens_cap:
        raise bad(f"`max_new_tokens` {max_new_tokens} is above this worker's cap of {limits.max_new_tokens_cap}")

    def flag(name: str) -> bool:
        value = data.get(name, False)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise bad(f"`{name}` must be true or false, got {str(value)[:40]}")
        return value

    do_sample = flag("do_sample")
    provisional = flag("provisional")
    temperature = data.get("temperature")
    if temperature is not None and (not _is_number(temperature) or temperature <= 0 or temperature > 1e4):
        raise bad(f"`temperature` must be a number in (0, 10000], got {str(temperature)[:40]}")
    top_p = data.get("top_p")
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise bad(f"`top_p` must be a number in (0, 1], got {str(top_p)[:40]}")
    top_k = data.get("top_k")
    if top_k is not None and (not _is_int(top_k) or not 0 <= top_k < 2**31):
        raise bad(f"`top_k` must be a non-negative integer, got {str(top_k)[:40]}")
    seed = data.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**62):
        raise bad(f"`seed` must be an integer in [0, 2**62), got {str(seed)[:40]}")
    return GenerationRequest(
        stream_id=stream_id,
        prompt=prompt,
        messages=messages,
        input_ids=input_ids,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=float(temperature) if temperature is not None else None,
        top_p=float(top_p) if top_p is not None else None,
        top_k=top_k,
        seed=seed,
        provisional=provisional,
    )


def parse_control(payload: bytes | str) -> ControlCommand:
    """``{"type": "cancel"}`` or ``{"type": "resume", "after_seq": n}`` (n >= -1); else BadRequestError."""
    data = _load_json(payload, 4096, "control message")
    if not isinstance(data, dict):
        raise BadRequestError("a control message must be a JSON object")
    kind = data.get("type")
    if kind == "cancel":
        return ControlCommand("cancel")
    if kind == "resume":
        after_seq = data.get("after_seq", -1)
        if not _is_int(after_seq) or after_seq < -1:
            raise BadRequestError(f"resume.after_seq must be an integer >= -1, got {str(after_seq)[:40]}")
        return ControlCommand("resume", after_seq)
    raise BadRequestError(f"control type must be 'cancel' or 'resume', got {str(kind)[:40]!r}")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)  # made once, not per call


def encode_json(data: Any) -> bytes:
    return _ENCODER.encode(data).encode("utf-8")


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _plain(obj: Any) -> dict[str, Any]:
    """A dataclass as a dict for JSON, like ``dataclasses.asdict`` but without its deep copy.

    The worker encodes every event once, on its event loop, next to a
    generation thread that wants the GIL; ``asdict`` was a fifth of the loop's
    time per event. The dict is encoded at once and dropped, so sharing the
    event's lists is safe. Same keys, same order as ``event_to_dict`` (tested).
    """
    out = {}
    for name in _field_names(type(obj)):  # type: ignore[arg-type]  # dataclass types hash fine
        value = getattr(obj, name)
        out[name] = _plain(value) if hasattr(type(value), "__dataclass_fields__") else value
    return out


def encode_event(event: Event) -> bytes:
    """One event as the UTF-8 JSON payload of one MQTT message."""
    return encode_json(_plain(event))


def decode_event(payload: bytes) -> Event:
    """Parse an event payload (raises ``specdec.streaming.events.EventDecodeError`` / ``ValueError``)."""
    return event_from_dict(json.loads(payload.decode("utf-8")))
