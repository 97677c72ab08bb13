"""Token streams over MQTT 5: a worker service, a client, and the wire protocol v1 (docs/mqtt.md).

- :func:`serve` / :class:`Worker`: take requests from ``$share/specdec/specdec/v1/requests``,
  generate with one loaded model, publish each stream's events QoS 1 with a message expiry.
- :class:`StreamClient`: ``async with StreamClient(url) as c: async for ev in c.generate(prompt)``,
  deduplicated, in ``seq`` order, gaps resumed, errors raised.
- :mod:`.protocol`: topics, request / control parsing; :mod:`.transport`: the aiomqtt boundary;
  :mod:`.connection`: the one reconnecting connection (client, worker, guards).
- The worker's rooms: :mod:`.intake`, :mod:`.publisher` (lossless publishing and replay from the hub's
  event log), :mod:`.guards` (per-stream Wills); :mod:`.broker` runs a private mosquitto.

Importing the client (``from specdec.streaming.mqtt import StreamClient``) needs neither torch nor
transformers (the worker imports the hub, and with it torch, only when a :class:`Worker` is made).
"""

from .client import StreamClient, new_stream_id
from .connection import Connection
from .errors import (
    BadRequestError,
    BrokerUnreachableError,
    ConnectionLostError,
    MqttLayerError,
    NoWorkerError,
    StreamError,
    StreamGapError,
    TransportError,
    WorkerLostError,
)
from .protocol import (
    CONTROL_WILDCARD,
    REQUEST_TOPIC,
    SHARED_REQUEST_TOPIC,
    ControlCommand,
    GenerationRequest,
    QueuedEvent,
    RequestLimits,
    control_topic,
    events_topic,
    parse_control,
    parse_request,
    worker_status_topic,
)
from .serve import serve
from .transport import BrokerConfig, Transport, WillSpec, connect
from .worker import Worker, WorkerSettings

__all__ = [
    "BadRequestError",
    "BrokerConfig",
    "BrokerUnreachableError",
    "Connection",
    "ConnectionLostError",
    "NoWorkerError",
    "CONTROL_WILDCARD",
    "ControlCommand",
    "GenerationRequest",
    "MqttLayerError",
    "QueuedEvent",
    "REQUEST_TOPIC",
    "RequestLimits",
    "SHARED_REQUEST_TOPIC",
    "StreamClient",
    "StreamError",
    "StreamGapError",
    "Transport",
    "TransportError",
    "WillSpec",
    "Worker",
    "WorkerLostError",
    "WorkerSettings",
    "connect",
    "control_topic",
    "events_topic",
    "new_stream_id",
    "parse_control",
    "parse_request",
    "serve",
    "worker_status_topic",
]
