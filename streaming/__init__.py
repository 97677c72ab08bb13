"""specdec.streaming: verified tokens as events for any number of asyncio subscribers.

``StreamHub.start`` runs a ``SpeculativeGenerator`` in a worker thread and
returns a :class:`Stream`; ``stream.subscribe()`` is an async iterator of the
events in :mod:`specdec.streaming.events` (schema in PROTOCOL.md). Also here: the
incremental detokenizer, adapters for transformers streamers and synchronous
code, and the terminal renderer used by ``specdec generate``. Imports only
``specdec``'s public names.
"""

from .adapters import BlockingHub, BlockingStream, feed_streamer, iter_events
from .detok import DecodeStreamDetokenizer, Detokenizer, OffsetDetokenizer, make_detokenizer
from .events import (
    SCHEMA_VERSION,
    STREAM_ID_PATTERN,
    CommitEvent,
    EndEvent,
    ErrorEvent,
    Event,
    EventDecodeError,
    ProvisionalEvent,
    StartEvent,
    Usage,
    event_from_dict,
    event_to_dict,
    validate_stream_id,
)
from ._log import EventLog
from ._subscription import OverflowPolicy, Subscription
from .errors import StreamError, StreamExpiredError, StreamingError, UnknownStreamError
from .events import FinishReason
from .hub import StreamHub
from .stream import Stream
from .terminal import TerminalRenderer, render_stream

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
