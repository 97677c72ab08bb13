"""``serve``: run one MQTT worker until stopped, optionally with a private mosquitto and signal handling.

This is what ``specdec serve`` calls. Stopping is graceful (see :mod:`.worker`):

- ``handle_signals=True``: SIGINT and SIGTERM call ``worker.stop()``; ``serve`` returns normally once every
  open stream has ended (subscribers get ``end``), the guards have disconnected cleanly and the broker it
  started (if any) has stopped. The CLI then exits 0.
- Cancelling the task running ``serve`` (Ctrl-C under ``asyncio.run`` without ``handle_signals``) does the
  same shutdown and then re-raises ``CancelledError``.

Example::

    asyncio.run(serve("mqtt://127.0.0.1:1883", generator, tokenizer, model_name="tiny", draft_name="ngram",
                      start_broker=True, handle_signals=True, on_ready=lambda w: print("ready", w.worker_id)))
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

from .protocol import RequestLimits
from .transport import BrokerConfig
from .worker import Worker, WorkerSettings

__all__ = ["serve"]


async def serve(
    broker_url: str,
    gen: Any,
    tokenizer: Any,
    *,
    username: str | None = None,
    password: str | None = None,
    tls_ca: str | None = None,
    max_new_tokens_cap: int = 1024,
    model_name: str = "unknown",
    draft_name: str = "unknown",
    start_broker: bool = False,
    worker_id: str | None = None,
    settings: WorkerSettings | None = None,
    handle_signals: bool = False,
    on_ready: Callable[[Worker], None] | None = None,
) -> None:
    """Run one worker until stopped; stop gracefully on cancel (Ctrl-C under ``asyncio.run``).

    ``broker_url`` is ``mqtt://host:port`` or ``mqtts://host:port``. With
    ``start_broker=True`` a private mosquitto is started on the URL's loopback
    host and port first, and stopped on exit (and it dies with this process on
    Linux even if this process is killed). ``settings`` overrides every other
    knob when given (``max_new_tokens_cap``, names, ``worker_id``).
    ``handle_signals=True``: SIGINT and SIGTERM stop the worker gracefully and
    ``serve`` returns normally. ``on_ready(worker)`` is called once the worker
    is connected and subscribed (e.g. to print a ready line).
    """
    config = BrokerConfig.from_url(broker_url, username=username, password=password, tls_ca=tls_ca)
    if settings is None:
        settings = WorkerSettings(
            model_name=model_name,
            draft_name=draft_name,
            worker_id=worker_id,
            limits=RequestLimits(
                max_new_tokens_cap=max_new_tokens_cap,
                default_max_new_tokens=min(256, max_new_tokens_cap),
            ),
        )
    broker = None
    if start_broker:
        from .broker import LocalMosquitto

        if config.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"--start-broker runs a local mosquitto; the broker URL must be loopback, not {config.host}"
            )
        broker = LocalMosquitto(port=config.port, host="127.0.0.1").start()
    loop = asyncio.get_running_loop()
    worker = Worker(config, gen, tokenizer, settings=settings)
    installed: list[signal.Signals] = []
    try:
        if handle_signals:
            for signum in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform / thread
                    loop.add_signal_handler(signum, worker.stop)
                    installed.append(signum)
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(worker.run(), name=f"specdec-worker-{worker.worker_id}")
            if on_ready is not None:
                ready = tg.create_task(worker.ready.wait())
                await asyncio.wait({ready, runner}, return_when=asyncio.FIRST_COMPLETED)
                if ready.done():
                    on_ready(worker)
                else:
                    ready.cancel()
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        if broker is not None:
            broker.close()
