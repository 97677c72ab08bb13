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
import re
import time
import unicodedata
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
    "QueuedEvent",
    "TOKEN_PATTERN",
    "MIN_TEMPERATURE",
    "peek_stream_id",
    "parse_request",
    "parse_control",
    "encode_event",
    "decode_event",
    "encode_json",
    "encode_queued",
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

# A stream's control capability: the requester picks it (``token`` in the request, which only workers
# can read) and every ``cancel`` must carry it. 16 characters at least: guessing one must not pay.
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}")

# Below this a temperature only divides logits into overflow (1e-300 became ``inf`` mid-stream);
# ask for ``do_sample: false`` to decode greedily.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 10_000.0

# How much of an unreadable or oversized request is searched for its ``stream_id`` (see peek_stream_id).
STREAM_ID_PREFIX_BYTES = 4096
_STREAM_ID_KEY = re.compile(rb'"stream_id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')

ControlCharacters = Literal["refuse", "strip", "keep"]
_KEPT_CONTROLS = frozenset("\n\r\t")


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
    # Control characters (Unicode category Cc) in prompt and message text other than newline, carriage
    # return and tab: "refuse" (bad_request), "strip" (drop them), or "keep" (pass them to the tokenizer).
    control_characters: ControlCharacters = "refuse"

    def __post_init__(self) -> None:
        for name in ("max_new_tokens_cap", "default_max_new_tokens", "max_payload_bytes", "max_prompt_chars",
                     "max_prompt_tokens", "max_messages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RequestLimits.{name} must be an integer >= 1, got {value!r}")
        if self.control_characters not in ("refuse", "strip", "keep"):
            raise ValueError(
                f"RequestLimits.control_characters must be 'refuse', 'strip' or 'keep', got {self.control_characters!r}"
            )


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
    token: str | None = None  # the requester's control capability (cancel must carry it)
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
    token: str | None = None  # the stream's capability, as the sender gave it (checked by the worker)


@dataclass(frozen=True, kw_only=True)
class QueuedEvent:
    """Out-of-band notice (``seq == -1``, schema v1 extension): the request waits for a free generation slot.

    ``position`` is 1 for the next stream to start. Sent when the request is queued and each time its
    position changes, and again on ``resume`` while it waits; its ``start`` (seq 0) follows when it runs.
    """

    stream_id: str
    position: int
    seq: int = OUT_OF_BAND_SEQ
    ts: float = field(default_factory=time.time)
    v: int = 1
    type: Literal["queued"] = "queued"


_REQUEST_FIELDS = {
    "v", "stream_id", "prompt", "messages", "input_ids", "max_new_tokens", "do_sample",
    "temperature", "top_p", "top_k", "seed", "provisional", "token",
}


def peek_stream_id(payload: bytes | bytearray | str) -> str | None:
    """The ``stream_id`` of a request that cannot be parsed whole (too large, not JSON), from a bounded prefix.

    Searches the first :data:`STREAM_ID_PREFIX_BYTES` bytes for ``"stream_id": "<valid id>"`` (a key:
    inside a JSON string the quotes would be escaped). ``None`` when there is none.
    """
    if isinstance(payload, str):
        payload = payload[:STREAM_ID_PREFIX_BYTES].encode("utf-8", "surrogatepass")
    if not isinstance(payload, (bytes, bytearray)):
        return None
    found = _STREAM_ID_KEY.search(bytes(payload[:STREAM_ID_PREFIX_BYTES]))
    return found.group(1).decode("ascii") if found else None


def _clean_text(text: str, policy: ControlCharacters, where: str, bad: Any) -> str:
    if policy == "keep":
        return text
    controls = {c for c in text if c not in _KEPT_CONTROLS and unicodedata.category(c) == "Cc"}
    if not controls:
        return text
    if policy == "strip":
        return "".join(c for c in text if c not in controls)
    shown = ", ".join(f"U+{ord(c):04X}" for c in sorted(controls)[:5])
    raise bad(f"{where} holds control characters ({shown}); only newline, carriage return and tab are accepted")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(payload: Any, limit: int, what: str, *, peek: bool = False) -> Any:
    """Parse; on failure the error names the stream id found in a bounded prefix (when ``peek``)."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    if not isinstance(payload, (bytes, bytearray)):
        raise BadRequestError(f"{what} payload must be bytes")
    if len(payload) > limit:
        raise BadRequestError(
            f"{what} is {len(payload)} bytes; the limit is {limit}", stream_id=peek_stream_id(payload) if peek else None
        )
    try:
        text = bytes(payload).decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadRequestError(
            f"{what} is not valid UTF-8 JSON (NaN and Infinity are not JSON): {str(exc)[:200]}",
            stream_id=peek_stream_id(payload) if peek else None,
        ) from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def parse_request(payload: bytes | str, limits: RequestLimits | None = None) -> GenerationRequest:
    """Validate a request payload; raise :class:`BadRequestError` (with ``stream_id`` when it is known)."""
    limits = limits or RequestLimits()
    data = _load_json(payload, limits.max_payload_bytes, "request", peek=True)
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
    if "v" in data and (not _is_int(data["v"]) or data["v"] != 1):
        raise bad(f"unsupported protocol version {str(data['v'])[:40]} (`v` must be the integer 1)")
    token = data.get("token")
    if token is not None and (not isinstance(token, str) or not TOKEN_PATTERN.fullmatch(token)):
        raise bad("`token` must match [A-Za-z0-9_-]{16,128} (a random secret of the requester)")

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
        prompt = _clean_text(prompt, limits.control_characters, "`prompt`", bad)
        if not prompt:
            raise bad("`prompt` is empty once its control characters are stripped")
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
        policy = limits.control_characters
        messages = [
            {"role": m["role"], "content": _clean_text(m["content"], policy, f"`messages[{i}]`", bad)}
            for i, m in enumerate(messages)
        ]
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
    if temperature is not None and (
        not _is_number(temperature) or not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE
    ):
        raise bad(
            f"`temperature` must be a number in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE:g}] (use do_sample=false "
            f"for greedy decoding), got {str(temperature)[:40]}"
        )
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
        token=token,
    )


def parse_control(payload: bytes | str) -> ControlCommand:
    """``{"type": "cancel", "token": t}`` or ``{"type": "resume", "after_seq": n}`` (n >= -1); else BadRequestError.

    ``token`` (optional here) is the stream's capability; the worker decides what it allows.
    """
    data = _load_json(payload, 4096, "control message")
    if not isinstance(data, dict):
        raise BadRequestError("a control message must be a JSON object")
    token = data.get("token")
    if token is not None and not isinstance(token, str):
        raise BadRequestError("control.token must be a string")
    kind = data.get("type")
    if kind == "cancel":
        return ControlCommand("cancel", token=token)
    if kind == "resume":
        after_seq = data.get("after_seq", -1)
        if not _is_int(after_seq) or after_seq < -1:
            raise BadRequestError(f"resume.after_seq must be an integer >= -1, got {str(after_seq)[:40]}")
        return ControlCommand("resume", after_seq, token=token)
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


def encode_queued(event: QueuedEvent) -> bytes:
    return encode_json(dataclasses.asdict(event))


def decode_event(payload: bytes) -> Event | QueuedEvent:
    """Parse an event payload (raises ``specdec.streaming.events.EventDecodeError`` / ``ValueError``).

    Besides the five stream events, the MQTT-only out-of-band ``queued`` notice decodes to :class:`QueuedEvent`.
    """
    data = json.loads(payload.decode("utf-8"))
    if isinstance(data, dict) and data.get("type") == "queued" and data.get("v") == 1:
        position, stream_id, ts = data.get("position"), data.get("stream_id"), data.get("ts", 0.0)
        if not isinstance(position, int) or isinstance(position, bool) or not isinstance(stream_id, str):
            raise ValueError("bad queued event")
        return QueuedEvent(stream_id=stream_id, position=position, ts=float(ts) if _is_number(ts) else 0.0)
    return event_from_dict(data)
