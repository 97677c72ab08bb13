"""A small MQTT 5 transport interface, and its aiomqtt (>=2.5,<3) implementation.

The reconnecting :class:`~specdec.streaming.mqtt.connection.Connection` (used by
both the worker and the client) only uses :class:`Transport`: connect / disconnect as
an async context manager, ``publish``, ``subscribe`` and an async iterator of
incoming :class:`Message`. Everything aiomqtt- or paho-specific (properties,
the Will, TLS, error types) stays in :class:`AiomqttTransport`, so an aiomqtt 3
implementation can slot in by providing another factory.

Example::

    config = BrokerConfig.from_url("mqtt://127.0.0.1:1883")
    async with connect(config) as transport:
        await transport.subscribe("specdec/v1/streams/abc/events")
        async for message in transport.messages():
            ...
"""

from __future__ import annotations

import logging
import random
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol
from urllib.parse import urlsplit

from .errors import BrokerUnreachableError, ConnectionLostError, TransportError

__all__ = [
    "BrokerConfig",
    "Message",
    "WillSpec",
    "Transport",
    "TransportFactory",
    "AiomqttTransport",
    "connect",
    "backoff_delays",
]


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """Where and how to connect. ``tls`` is on for ``mqtts://`` URLs or when ``tls_ca`` is given."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca: str | None = None  # CA certificate file; None = the system's CAs
    keepalive_s: int = 15

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
    ) -> BrokerConfig:
        """Parse ``mqtt://host[:port]`` or ``mqtts://host[:port]`` (user:password@ in the URL also works)."""
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(f"broker URL must look like mqtt://host:port or mqtts://host:port, got {url!r}")
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"broker URL scheme must be mqtt:// or mqtts://, got {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} names no host")
        tls = parts.scheme in ("mqtts", "ssl") or tls_ca is not None
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ValueError(f"broker URL {url!r} has a bad port") from exc
        return cls(
            host=parts.hostname,
            port=port,
            username=username if username is not None else parts.username,
            password=password if password is not None else parts.password,
            tls=tls,
            tls_ca=tls_ca,
        )


@dataclass(frozen=True)
class Message:
    """One incoming message."""

    topic: str
    payload: bytes


@dataclass(frozen=True, kw_only=True)
class WillSpec:
    """The message the broker publishes for us if our connection dies without a clean DISCONNECT.

    ``delay_s`` is MQTT 5's Will Delay Interval: the broker waits that long and
    drops the Will if we reconnect (same client id, session kept) in time.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    delay_s: int = 0
    expiry_s: int | None = None


class Transport(Protocol):
    """What the worker and client need from an MQTT 5 connection."""

    async def __aenter__(self) -> Transport: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, expiry_s: int | None = None
    ) -> None:
        """Publish; with QoS 1, returns once the broker acknowledged. Raises TransportError."""
        ...

    async def subscribe(self, topic: str, *, qos: int = 1) -> None: ...

    async def unsubscribe(self, topic: str) -> None: ...

    def messages(self) -> AsyncIterator[Message]:
        """Incoming messages; raises :class:`TransportError` when the connection is lost."""
        ...


TransportFactory = Callable[..., Transport]


class _QuietPending(logging.Filter):
    """aiomqtt warns once more than 10 QoS 1 publishes await their PUBACK; pipelining them is on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pending publish calls" not in record.getMessage()


_AIOMQTT_LOG = logging.getLogger(__name__ + ".aiomqtt")
_AIOMQTT_LOG.addFilter(_QuietPending())


class AiomqttTransport:
    """:class:`Transport` over ``aiomqtt.Client`` (MQTT 5)."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        client_id: str | None = None,
        will: WillSpec | None = None,
        session_expiry_s: int | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        import aiomqtt  # the one import of the library, so a missing extra fails here with a clear error
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._aiomqtt = aiomqtt
        self._Properties = Properties
        self._PacketTypes = PacketTypes
        self._publish_props: dict[int, Properties] = {}  # PUBLISH properties by message expiry
        self.config = config
        self.client_id = client_id or f"specdec-{uuid.uuid4().hex[:12]}"
        aio_will = None
        if will is not None:
            will_props = Properties(PacketTypes.WILLMESSAGE)
            if will.delay_s:
                will_props.WillDelayInterval = int(will.delay_s)
            if will.expiry_s:
                will_props.MessageExpiryInterval = int(will.expiry_s)
            aio_will = aiomqtt.Will(will.topic, will.payload, will.qos, will.retain, will_props)
        connect_props = None
        if session_expiry_s:
            connect_props = Properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = int(session_expiry_s)
        tls_params = aiomqtt.TLSParameters(ca_certs=config.tls_ca) if config.tls else None
        self._client = aiomqtt.Client(
            config.host,
            config.port,
            username=config.username,
            password=config.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aio_will,
            keepalive=config.keepalive_s,
            timeout=timeout_s,
            properties=connect_props,
            tls_params=tls_params,
            max_inflight_messages=1000,
            # Many small messages: without TCP_NODELAY, Nagle holds each publish back until the
            # previous one is acknowledged by TCP (up to a 40 ms delayed ACK on Linux).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            logger=_AIOMQTT_LOG,
        )

    async def __aenter__(self) -> AiomqttTransport:
        try:
            await self._client.__aenter__()
        except (self._aiomqtt.MqttError, OSError) as exc:
            raise BrokerUnreachableError(f"cannot connect to {self.config.host}:{self.config.port}: {exc}") from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._client.__aexit__(exc_type, exc, tb)
        except self._aiomqtt.MqttError:
            pass  # already gone: nothing left to close

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, expiry_s: int | None = None
    ) -> None:
        props = self._publish_props.get(expiry_s) if expiry_s else None
        if expiry_s and props is None:
            props = self._Properties(self._PacketTypes.PUBLISH)  # read-only once made: shared by every publish
            props.MessageExpiryInterval = int(expiry_s)
            self._publish_props[expiry_s] = props
        try:
            await self._client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        except self._aiomqtt.MqttError as exc:
            raise TransportError(f"publish to {topic} failed: {exc}") from exc

    async def subscribe(self, topic: str, *, qos: int = 1) -> None:
        try:
            await self._client.subscribe(topic, qos=qos)
        except self._aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe to {topic} failed: {exc}") from exc

    async def unsubscribe(self, topic: str) -> None:
        try:
            await self._client.unsubscribe(topic)
        except self._aiomqtt.MqttError as exc:
            raise TransportError(f"unsubscribe from {topic} failed: {exc}") from exc

    async def messages(self) -> AsyncIterator[Message]:
        iterator = self._client.messages.__aiter__()
        while True:
            try:
                message = await iterator.__anext__()
            except self._aiomqtt.MqttError as exc:
                raise ConnectionLostError(f"connection to the broker lost: {exc}") from exc
            payload = message.payload
            if isinstance(payload, str):
                payload = payload.encode()
            elif not isinstance(payload, (bytes, bytearray)):
                payload = b"" if payload is None else str(payload).encode()
            yield Message(str(message.topic), bytes(payload))


def connect(
    config: BrokerConfig,
    *,
    client_id: str | None = None,
    will: WillSpec | None = None,
    session_expiry_s: int | None = None,
) -> Transport:
    """The default :data:`TransportFactory` (aiomqtt 2.x). Use as ``async with connect(config) as t``."""
    return AiomqttTransport(config, client_id=client_id, will=will, session_expiry_s=session_expiry_s)


def backoff_delays(*, base_s: float = 0.1, cap_s: float = 10.0) -> Iterator[float]:
    """Endless jittered exponential backoff: delay ``i`` is uniform in [base/2, min(cap, base * 2**i)].

    Usage: ``delays = backoff_delays(); await asyncio.sleep(next(delays))``; build a
    new one after a successful connection.
    """
    attempt = 0
    while True:
        yield random.uniform(base_s / 2, min(cap_s, base_s * 2**attempt))
        attempt = min(attempt + 1, 30)

