"""specdec.streaming: verified tokens as events for any number of asyncio subscribers.

``StreamHub.start`` runs a ``SpeculativeGenerator`` in a worker thread and
returns a :class:`Stream`; ``stream.subscribe()`` is an async iterator of the
events in :mod:`specdec.streaming.events` (schema in PROTOCOL.md). Also here: the
incremental detokenizer, adapters for transformers streamers and synchronous
code, and the terminal renderer used by ``specdec generate``. Imports only
``specdec``'s public names.
"""

from typing import TYPE_CHECKING, Any

from .errors import EventDecodeError, StreamError, StreamExpiredError, StreamingError, UnknownStreamError
from .events import (
    SCHEMA_VERSION,
    STREAM_ID_PATTERN,
    CommitEvent,
    EndEvent,
    ErrorEvent,
    Event,
    FinishReason,
    ProvisionalEvent,
    StartEvent,
    Usage,
    event_from_dict,
    event_to_dict,
    validate_stream_id,
)

# The hub, the adapters and the renderer need torch: they load on first use, so that the MQTT
# client (specdec.streaming.mqtt.client) stays light to import.
_LAZY = {
    "BlockingHub": ".adapters",
    "BlockingStream": ".adapters",
    "feed_streamer": ".adapters",
    "iter_events": ".adapters",
    "DecodeStreamDetokenizer": ".detok",
    "Detokenizer": ".detok",
    "OffsetDetokenizer": ".detok",
    "make_detokenizer": ".detok",
    "EventLog": "._log",
    "OverflowPolicy": "._subscription",
    "Subscription": "._subscription",
    "StreamHub": ".hub",
    "Stream": ".stream",
    "TerminalRenderer": ".terminal",
    "render_stream": ".terminal",
}

if TYPE_CHECKING:
    from ._log import EventLog
    from ._subscription import OverflowPolicy, Subscription
    from .adapters import BlockingHub, BlockingStream, feed_streamer, iter_events
    from .detok import DecodeStreamDetokenizer, Detokenizer, OffsetDetokenizer, make_detokenizer
    from .hub import StreamHub
    from .stream import Stream
    from .terminal import TerminalRenderer, render_stream


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "SCHEMA_VERSION",
    "STREAM_ID_PATTERN",
    "BlockingHub",
    "BlockingStream",
    "CommitEvent",
    "DecodeStreamDetokenizer",
    "Detokenizer",
    "EndEvent",
    "ErrorEvent",
    "Event",
    "EventDecodeError",
    "EventLog",
    "FinishReason",
    "OffsetDetokenizer",
    "OverflowPolicy",
    "ProvisionalEvent",
    "StartEvent",
    "Stream",
    "StreamError",
    "StreamExpiredError",
    "StreamHub",
    "StreamingError",
    "Subscription",
    "TerminalRenderer",
    "UnknownStreamError",
    "Usage",
    "event_from_dict",
    "event_to_dict",
    "feed_streamer",
    "iter_events",
    "make_detokenizer",
    "render_stream",
    "validate_stream_id",
]
