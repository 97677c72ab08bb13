"""Per-stream Will guards: an MQTT Will that names exactly the streams a dead worker was serving.

An MQTT Will is fixed when a connection is made, so the worker's own
connection cannot name streams that arrive later. Instead every accepted stream
gets a small guard :class:`~specdec.streaming.mqtt.connection.Connection` whose
Will is ``error(code="worker_lost", seq=-1)`` on that stream's events topic.
When the stream has been published, the guard disconnects cleanly and the
broker drops the Will; when the worker process dies, the broker publishes every
guard's Will: an error on exactly the streams the worker was serving. A worker
that stops gracefully ends its streams first and then closes their guards
cleanly, so no Will fires (docs/mqtt.md, "Worker loss").

A guard's client id is ``specdec-guard-{digest}``, a keyed hash of the stream id under the worker's
secret: nobody else can name it, so nobody can take the connection over and make the broker publish its
Will (an MQTT broker disconnects the older of two connections with one client id, and a password-file
ACL checks topics, not client ids; docs/mqtt.md, "Threat model"). It is fixed per stream, so a guard
that reconnects keeps its session (and, with ``will_delay_s``, suppresses its Will).

Example::

    async with asyncio.TaskGroup() as tg:
        guard = tg.create_task(guards.hold("stream-1"))
        ...                                   # serve the stream
        guard.cancel()                        # clean DISCONNECT: the Will is dropped
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from ..events import ErrorEvent
from .connection import Connection
from .protocol import OUT_OF_BAND_SEQ, encode_event, events_topic
from .transport import BrokerConfig, TransportFactory, WillSpec

__all__ = ["Guards"]


class Guards:
    """Makes the guard connections of one worker."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        worker_id: str,
        factory: TransportFactory,
        will_delay_s: int = 0,
        event_expiry_s: int = 600,
        secret: str | None = None,
    ) -> None:
        self.config = config
        self._secret = (secret or secrets.token_hex(16)).encode()
        self.worker_id = worker_id
        self._factory = factory
        self._will_delay_s = will_delay_s
        self._event_expiry_s = event_expiry_s

    def will(self, stream_id: str) -> WillSpec:
        """The Will of ``stream_id``'s guard: ``error(worker_lost, seq=-1)`` on its events topic."""
        notice = ErrorEvent(
            stream_id=stream_id,
            seq=OUT_OF_BAND_SEQ,
            code="worker_lost",
            message=f"worker {self.worker_id} serving this stream disconnected; the stream is lost",
            retryable=True,
        )
        return WillSpec(
            topic=events_topic(stream_id),
            payload=encode_event(notice),
            delay_s=self._will_delay_s,
            expiry_s=self._event_expiry_s,
        )

    def client_id(self, stream_id: str) -> str:
        """``specdec-guard-`` + 32 hex digits of HMAC-SHA256(worker secret, stream id): unguessable, stable."""
        digest = hmac.new(self._secret, stream_id.encode(), hashlib.sha256).hexdigest()[:32]
        return f"specdec-guard-{digest}"

    def connection(self, stream_id: str) -> Connection:
        return Connection(
            self.config,
            client_id=self.client_id(stream_id),
            factory=self._factory,
            will=self.will(stream_id),
            session_expiry_s=self._will_delay_s or None,
            label=f"guard {stream_id}",
            quiet=True,
        )

    async def hold(self, stream_id: str) -> None:
        """Hold ``stream_id``'s guard connection (reconnecting) until cancelled; cancelling disconnects cleanly."""
        await self.connection(stream_id).run()
