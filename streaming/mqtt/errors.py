"""Errors of the MQTT layer, all under :class:`specdec.streaming.StreamingError` (so under ``SpecDecError``).

::

    StreamingError
    ├── MqttLayerError                  root of what only the MQTT layer raises
    │   ├── TransportError              the broker connection failed or was lost
    │   │   ├── BrokerUnreachableError  never connected ("cannot connect"; hints at ``--start-broker``)
    │   │   └── ConnectionLostError     was connected, then lost
    │   └── BadRequestError (ValueError)  a request payload is not a valid version-1 request
    └── StreamError                     (the one in specdec.streaming.errors) a stream ended with an error event
        ├── WorkerLostError             the serving worker died (its Will arrived)
        ├── StreamGapError              events are missing and could not be replayed
        └── NoWorkerError               no worker answered a request within the client's timeout

Third-party (aiomqtt / paho) errors are translated at the transport boundary
with ``raise ... from exc``.
"""

from __future__ import annotations

from ..errors import StreamError, StreamingError

__all__ = [
    "MqttLayerError",
    "TransportError",
    "BrokerUnreachableError",
    "ConnectionLostError",
    "BadRequestError",
    "StreamError",
    "WorkerLostError",
    "StreamGapError",
    "NoWorkerError",
]

START_BROKER_HINT = "if no broker runs there, `specdec serve --start-broker` starts a local mosquitto"


class MqttLayerError(StreamingError):
    """Root of the errors raised only by ``specdec.streaming.mqtt``."""


class TransportError(MqttLayerError):
    """The broker connection failed or was lost (retry after a reconnect)."""


class BrokerUnreachableError(TransportError):
    """Cannot connect: no connection to the broker was ever made (wrong address, no broker, refused login)."""


class ConnectionLostError(TransportError):
    """A connection to the broker was made and then lost."""


class BadRequestError(MqttLayerError, ValueError):
    """A request payload is not a valid version-1 request.

    ``stream_id`` is the request's stream id when it could be read and is
    valid, so that the worker can answer on that stream; ``None`` otherwise.
    """

    def __init__(self, message: str, *, stream_id: str | None = None, code: str = "bad_request") -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.code = code


class WorkerLostError(StreamError):
    """The worker serving the stream died (its Will arrived): ``code == "worker_lost"``."""

    default_code = "worker_lost"


class StreamGapError(StreamError):
    """Events are missing and the worker could not replay them (``code == "gap"``)."""

    default_code = "gap"


class NoWorkerError(StreamError):
    """No worker answered the request (no ``start`` event) within the client's ``timeout``: ``code == "no_worker"``."""

    default_code = "no_worker"
