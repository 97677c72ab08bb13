"""One reconnecting MQTT connection, shared by the client, the worker and the worker's per-stream guards.

A :class:`Connection` runs ``connect → (re)subscribe → on_connect → read
messages`` in a loop with jittered exponential backoff, and offers the one
wait-and-retry loop everybody needs: :meth:`publish`, :meth:`publish_many` and
:meth:`subscribe` wait for a live connection and retry on the next one after a
failure. Each successful connect is a :class:`Session` (its transport, its
number, and a ``lost`` future that completes when it goes down), so a
publisher can watch for the loss of the connection it is using.

"Cannot connect" and "connection lost" are told apart: until the first
connect succeeds, failures are :class:`BrokerUnreachableError` (logged with a
hint at ``specdec serve --start-broker``; raised at once with
``fail_fast=True``, which the client uses); after that they are logged as a
lost connection and retried.

Example::

    conn = Connection(config, client_id="me", on_message=print, topics=lambda: ["a/b"])
    async with conn:                 # runs conn.run(fail_fast=True) in a task; returns once connected
        await conn.publish("a/b", b"hi")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

from .errors import START_BROKER_HINT, BrokerUnreachableError, TransportError
from .transport import BrokerConfig, Message, Transport, TransportFactory, WillSpec, backoff_delays, connect

__all__ = ["Connection", "Session"]

log = logging.getLogger(__name__)

_RETRY_PAUSE_S = 0.05  # after a failed operation on a connection that is going down
_UNREACHABLE_LOG_EVERY = 20  # attempts between two "cannot connect" warnings


@dataclass(eq=False)
class Session:
    """One live connection: its transport, its number (1 = the first), and a future done when it is lost."""

    transport: Transport
    number: int
    lost: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Connection:
    """A reconnecting MQTT 5 connection. ``run()`` until cancelled (cancelling disconnects cleanly)."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        client_id: str,
        factory: TransportFactory = connect,
        will: WillSpec | None = None,
        session_expiry_s: int | None = None,
        topics: Callable[[], Iterable[str]] = tuple,
        on_message: Callable[[Message], None] | None = None,
        on_connect: Callable[[Session], Awaitable[None]] | None = None,
        label: str = "connection",
        quiet: bool = False,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self._factory = factory
        self._will = will
        self._session_expiry_s = session_expiry_s
        self._topics = topics
        self._on_message = on_message
        self._on_connect = on_connect
        self.label = label
        self._warn = log.debug if quiet else log.warning  # guards reconnect quietly: the worker already says it
        self._session: Session | None = None
        self._live = asyncio.Event()
        self.connections = 0  # successful connects so far
        self._runner: asyncio.Task[None] | None = None

    # -- state -------------------------------------------------------------------------

    @property
    def session(self) -> Session | None:
        """The live session, or ``None`` while disconnected."""
        return self._session

    @property
    def reconnects(self) -> int:
        return max(0, self.connections - 1)

    @property
    def where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    async def wait_session(self) -> Session:
        """The live session, waiting for one if disconnected."""
        while True:
            session = self._session
            if session is not None and not session.lost.done():
                return session
            await self._live.wait()
            if self._session is None:  # woke up for a session that is already gone
                await asyncio.sleep(0)

    # -- the loop ------------------------------------------------------------------------

    async def run(self, *, fail_fast: bool = False) -> None:
        """Connect, serve, reconnect with backoff, until cancelled.

        ``fail_fast``: raise :class:`BrokerUnreachableError` if the very first
        connect fails, instead of retrying.
        """
        delays = backoff_delays()
        attempts = 0
        while True:
            try:
                await self._serve_one()
                delays = backoff_delays()
                attempts = 0
                self._warn("%s: connection to %s closed; reconnecting", self.label, self.where)
            except TransportError as exc:
                attempts += 1
                if self.connections == 0:
                    error = BrokerUnreachableError(
                        f"{self.label}: cannot connect to the MQTT broker at {self.where} ({exc}); {START_BROKER_HINT}"
                    )
                    if fail_fast:
                        raise error from exc
                    if attempts % _UNREACHABLE_LOG_EVERY == 1:
                        self._warn("%s (attempt %d; retrying)", error, attempts)
                else:
                    if attempts == 1:
                        self._warn("%s: connection to %s lost (%s); reconnecting", self.label, self.where, exc)
                    if self.connections and attempts % _UNREACHABLE_LOG_EVERY == 0:
                        self._warn("%s: still reconnecting to %s (attempt %d)", self.label, self.where, attempts)
            await asyncio.sleep(next(delays))

    async def _serve_one(self) -> None:
        async with self._factory(
            self.config, client_id=self.client_id, will=self._will, session_expiry_s=self._session_expiry_s
        ) as transport:
            for topic in list(self._topics()):
                await transport.subscribe(topic)
            self.connections += 1
            session = Session(transport, self.connections)
            self._session = session
            self._live.set()
            if self.connections > 1:
                log.info("%s: reconnected to %s", self.label, self.where)
            try:
                if self._on_connect is not None:
                    await self._on_connect(session)
                async for message in transport.messages():
                    if self._on_message is not None:
                        self._on_message(message)
            finally:
                self._session = None
                self._live.clear()
                if not session.lost.done():
                    session.lost.set_result(None)

    # -- the one wait-and-retry loop ---------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
        retry: bool = True,
    ) -> bool:
        """Publish once a connection is live; on failure retry on the next one.

        ``retry=False``: one attempt, and none while disconnected (return False at once). A publish
        still awaiting its acknowledgement when its connection is lost counts as failed at once (the
        client library would only fail it at its own timeout).
        """
        while True:
            if not retry and (self._session is None or self._session.lost.done()):
                return False
            session = await self.wait_session()
            publish = asyncio.ensure_future(
                session.transport.publish(topic, payload, qos=qos, retain=retain, expiry_s=expiry_s)
            )
            try:
                await asyncio.wait({publish, session.lost}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                publish.cancel()
                raise
            if publish.done() and publish.exception() is None:
                return True
            if not publish.done():
                publish.cancel()
            elif not isinstance(publish.exception(), TransportError):
                raise publish.exception()  # type: ignore[misc]
            if not retry:
                return False
            await asyncio.sleep(_RETRY_PAUSE_S)

    async def publish_many(self, topic: str, payloads: list[bytes], *, expiry_s: int | None = None) -> None:
        """Publish in order, pipelined; after a failure, go on from the first unacknowledged one."""
        done = 0
        while done < len(payloads):
            session = await self.wait_session()
            results = await asyncio.gather(
                *(session.transport.publish(topic, p, qos=1, expiry_s=expiry_s) for p in payloads[done:]),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    if not isinstance(result, TransportError):
                        raise result
                    await asyncio.sleep(_RETRY_PAUSE_S)
                    break
                done += 1

    async def subscribe(self, topic: str) -> None:
        """Subscribe on the live connection (the reconnect re-subscribes every topic ``topics()`` names)."""
        while True:
            session = await self.wait_session()
            try:
                await session.transport.subscribe(topic)
                return
            except TransportError:
                await asyncio.sleep(_RETRY_PAUSE_S)

    async def unsubscribe(self, topic: str) -> None:
        """Best effort: a lost connection forgets its subscriptions anyway."""
        session = self._session
        if session is not None:
            with contextlib.suppress(TransportError):
                await session.transport.unsubscribe(topic)

    # -- as a context manager: run in the background ------------------------------------------

    async def __aenter__(self) -> Connection:
        """Run :meth:`run` (``fail_fast=True``) in a task; return once connected or raise why not."""
        runner = asyncio.create_task(self.run(fail_fast=True), name=f"specdec-{self.label}-{self.client_id}")
        self._runner = runner
        live = asyncio.create_task(self._live.wait())
        try:
            await asyncio.wait({live, runner}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            live.cancel()
        if runner.done():
            self._runner = None
            runner.result()  # raises BrokerUnreachableError
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
