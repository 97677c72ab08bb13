"""Errors of the MQTT layer, all under :class:`specdec.SpecDecError`.

Third-party (aiomqtt / paho) errors are translated at the transport boundary
into :class:`TransportError` with ``raise ... from exc``.
"""

from __future__ import annotations

from specdec import SpecDecError

__all__ = [
    "MqttLayerError",
    "TransportError",
    "BadRequestError",
    "StreamError",
    "WorkerLostError",
    "StreamGapError",
]


class MqttLayerError(SpecDecError):
    """Root of the errors raised by ``specdec.streaming.mqtt``."""


class TransportError(MqttLayerError):
    """The broker connection failed or was lost (retry after a reconnect)."""


class BadRequestError(MqttLayerError, ValueError):
    """A request payload is not a valid version-1 request.

    ``stream_id`` is the request's stream id when it could be read and is
    valid, so that the worker can answer on that stream; ``None`` otherwise.
    """

    def __init__(self, message: str, *, stream_id: str | None = None, code: str = "bad_request") -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.code = code


class StreamError(MqttLayerError):
    """A stream ended with an ``error`` event (raised by :class:`StreamClient`)."""

    def __init__(self, code: str, message: str, *, retryable: bool = False, stream_id: str | None = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.stream_id = stream_id


class WorkerLostError(StreamError):
    """The worker serving the stream died (its Will arrived): ``code == "worker_lost"``."""


class StreamGapError(StreamError):
    """Events are missing and the worker could not replay them (``code == "gap"``)."""
