"""The streaming layer's errors: one root, :class:`StreamingError`, under :class:`specdec.SpecDecError`.

::

    SpecDecError
    └── StreamingError                  root of specdec.streaming (and of specdec.streaming.mqtt)
        ├── EventDecodeError (ValueError)   a dict / JSON payload is not a valid version-1 event
        └── StreamError                 a stream failed or cannot be served: .code, .message, .retryable, .stream_id
            ├── UnknownStreamError (KeyError)   the hub holds no stream with this id
            │   └── StreamExpiredError          it ended and its retention passed
            └── (MQTT) WorkerLostError, StreamGapError, NoWorkerError   in specdec.streaming.mqtt.errors

``StreamError`` is the one error a subscriber or client sees when a stream
fails: the in-process hub raises it (``code`` such as ``"unknown_stream"``,
``"hub_closed"``) and the MQTT client raises it for an ``error`` event (``code``
from the event, e.g. ``"bad_request"``).
"""

from __future__ import annotations

from specdec import SpecDecError

__all__ = ["StreamingError", "EventDecodeError", "StreamError", "UnknownStreamError", "StreamExpiredError"]


class StreamingError(SpecDecError):
    """Root of every error ``specdec.streaming`` raises on purpose."""


class EventDecodeError(StreamingError, ValueError):
    """A dict (or JSON payload) is not a valid version-1 event."""


class StreamError(StreamingError):
    """A stream failed, or cannot be served. ``str()`` is ``"[code] message"``.

    ``code`` names the failure (the ``error`` event's code over MQTT),
    ``retryable`` says whether the same request may succeed later, and
    ``stream_id`` names the stream when known.
    """

    default_code = "stream_error"

    def __init__(
        self, message: str, *, code: str | None = None, retryable: bool = False, stream_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.retryable = retryable
        self.stream_id = stream_id

    def __str__(self) -> str:  # KeyError subclasses would show the repr of the message
        return f"[{self.code}] {self.message}"


class UnknownStreamError(StreamError, KeyError):
    """No stream with this id is held by the hub."""

    default_code = "unknown_stream"


class StreamExpiredError(UnknownStreamError):
    """The stream finished and its retention time passed: its events are gone."""

    default_code = "stream_expired"
