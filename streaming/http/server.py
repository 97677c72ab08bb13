"""Running the HTTP front door: uvicorn on ``HOST:PORT``, optionally beside an MQTT worker on the same hub."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import uvicorn

from specdec import InvalidArgumentError

from .. import StreamHub
from .app import create_app
from .service import Frontend
from .settings import HttpSettings

__all__ = ["parse_address", "serve_http", "run_server"]


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:8000"`` for IPv6) as ``(host, port)``; ``InvalidArgumentError`` otherwise."""
    if not isinstance(address, str) or ":" not in address:
        raise InvalidArgumentError(f"the HTTP address must be HOST:PORT (e.g. 127.0.0.1:8000), got {address!r}")
    host, _, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidArgumentError(f"the HTTP address must be HOST:PORT with a port 0-65535, got {address!r}")
    return host, int(port_text)


async def serve_http(
    address: str,
    generator: Any,
    tokenizer: Any,
    *,
    settings: HttpSettings | None = None,
    hub: StreamHub | None = None,
    alongside: Callable[[StreamHub], Coroutine[Any, Any, None]] | None = None,
    log_level: str = "warning",
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve until cancelled. ``alongside(hub)``: another front door (an MQTT worker) run on the same hub,
    so that one generator's streams, from both doors, run one at a time."""
    host, port = parse_address(address)
    frontend = Frontend(generator, tokenizer, settings or HttpSettings(), hub=hub)
    config = uvicorn.Config(
        create_app(frontend), host=host, port=port, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    tasks = [asyncio.create_task(server.serve(), name="specdec-http")]
    if alongside is not None:
        tasks.append(asyncio.create_task(alongside(frontend.hub), name="specdec-alongside"))
    if on_ready is not None:
        while not server.started and not tasks[0].done():
            await asyncio.sleep(0.02)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname() if server.servers else (host, port)
            on_ready(host, int(bound[1]))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # a front door that failed takes the server down with its error
    finally:
        server.should_exit = True
        for task in tasks[1:]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run_server(
    address: str,
    generator: Any,
    tokenizer: Any,
    *,
    model_name: str = "specdec",
    draft_name: str = "unknown",
    max_tokens_cap: int = 1024,
    broker: str | None = None,
    mqtt_options: dict[str, Any] | None = None,
    settings: HttpSettings | None = None,
) -> int:
    """Blocking entry point for ``specdec serve --http HOST:PORT`` (and ``--broker`` alongside).

    ``broker``: also run an MQTT worker (``mqtt://host:port``) on the same
    hub; ``mqtt_options`` go to :func:`specdec.streaming.mqtt.worker`'s settings
    (``username``, ``password``, ``tls_ca``, ``start_broker``).
    """
    if settings is None:
        settings = HttpSettings(
            model_name=model_name, draft_name=draft_name, max_tokens_cap=max_tokens_cap,
            default_max_tokens=min(256, max_tokens_cap),
            # a generator whose generate calls share one engine serves several requests per forward pass
            concurrency=8 if getattr(generator, "concurrent_generate", False) else 1,
        )  # fmt: skip
    alongside = None
    if broker is not None:
        alongside = _mqtt_worker(broker, generator, tokenizer, settings, max_tokens_cap, **(mqtt_options or {}))
    parse_address(address)  # a bad address fails here, before the event loop starts

    def ready(host: str, port: int) -> None:
        print(f"specdec: serving {settings.model_name} on http://{host}:{port}/ (OpenAI API at /v1)", flush=True)

    try:
        asyncio.run(serve_http(address, generator, tokenizer, settings=settings, alongside=alongside, on_ready=ready))
    except KeyboardInterrupt:
        return 130
    return 0


def _mqtt_worker(
    broker: str, generator: Any, tokenizer: Any, settings: HttpSettings, max_tokens_cap: int, *,
    username: str | None = None, password: str | None = None, tls_ca: str | None = None, start_broker: bool = False,
) -> Callable[[StreamHub], Coroutine[Any, Any, None]]:  # fmt: skip
    from ..mqtt import BrokerConfig, RequestLimits, Worker, WorkerSettings

    config = BrokerConfig.from_url(broker, username=username, password=password, tls_ca=tls_ca)
    worker_settings = WorkerSettings(
        model_name=settings.model_name, draft_name=settings.draft_name,
        limits=RequestLimits(max_new_tokens_cap=max_tokens_cap, default_max_new_tokens=min(256, max_tokens_cap)),
    )  # fmt: skip

    async def run(hub: StreamHub) -> None:
        local = None
        if start_broker:
            from ..mqtt.broker import LocalMosquitto  # not re-exported by the mqtt package

            if config.host not in ("127.0.0.1", "localhost", "::1"):
                raise InvalidArgumentError(f"--start-broker needs a loopback broker URL, not {config.host}")
            local = LocalMosquitto(port=config.port, host="127.0.0.1").start()
        try:
            await Worker(config, generator, tokenizer, settings=worker_settings, hub=hub).run()
        finally:
            if local is not None:
                local.close()

    return run
