"""The worker side: serve one loaded generator on a Unix socket until stopped or idle.

Each connection carries one request. ``generate`` requests run through a
:class:`~specdec.streaming.StreamHub` (concurrently when the generator batches
rows, one at a time otherwise, as the hub decides); the connection's events
are the stream's events. The worker stops on :meth:`ResidentServer.stop`, on a
``stop`` request, or after ``idle_timeout_s`` with no open request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..events import event_to_dict
from ..hub import StreamHub
from .client import PROTOCOL_VERSION

__all__ = ["ResidentServer", "Prepared"]

_MAX_REQUEST = 4 * 1024 * 1024  # bytes in one request line (the prompt travels in it)

# prepare(argv) -> (input_ids, generate kwargs, show_drafts); raises ValueError (or SpecDecError) for a bad request.
Prepared = tuple[Any, dict[str, Any], bool]


class ResidentServer:
    """Serves ``generator`` on ``path`` (see the package docstring for the wire format)."""

    def __init__(
        self, generator: Any, tokenizer: Any, *, path: Path, describe: dict[str, Any],
        prepare: Callable[[list[str]], Prepared], idle_timeout_s: float | None = 900.0,
    ) -> None:  # fmt: skip
        if idle_timeout_s is not None and not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0 or None, got {idle_timeout_s}")
        self.generator, self.tokenizer, self.path = generator, tokenizer, Path(path)
        self.describe = {"pid": os.getpid(), **describe}
        self.prepare = prepare
        self.idle_timeout_s = idle_timeout_s
        self._stop = asyncio.Event()
        self._open = 0
        self._last_activity = time.monotonic()
        self.served = 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self, on_ready: Callable[[], None] | None = None) -> str:
        """Listen until stopped or idle; return why it stopped (``"stopped"`` or ``"idle"``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket (its worker was killed); a live one was checked by the caller
        hub = StreamHub()
        server = await asyncio.start_unix_server(
            lambda r, w: self._handle(r, w, hub), path=str(self.path), limit=_MAX_REQUEST
        )
        os.chmod(self.path, 0o600)
        reason = "stopped"
        try:
            if on_ready is not None:
                on_ready()
            while not self._stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=1.0)
                idle = time.monotonic() - self._last_activity
                if self.idle_timeout_s is not None and self._open == 0 and idle >= self.idle_timeout_s:
                    reason = "idle"
                    break
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            await hub.close()  # cancels and joins any generation still running
            await server.wait_closed()
        return reason

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hub: StreamHub) -> None:
        self._open += 1
        try:
            try:
                line = await reader.readline()
                message = json.loads(line)
                if not isinstance(message, dict) or message.get("v") != PROTOCOL_VERSION:
                    raise ValueError(f"expected a JSON object with \"v\": {PROTOCOL_VERSION}")
            except (ValueError, asyncio.LimitOverrunError) as exc:
                await self._send(writer, {"error": {"code": "bad_request", "message": f"unreadable request: {exc}"}})
                return
            op = message.get("op")
            if op == "ping":
                await self._send(writer, {**self.describe, "served": self.served, "open": self._open - 1})
            elif op == "stop":
                await self._send(writer, {"stopping": True})
                self._stop.set()
            elif op == "generate":
                await self._generate(message.get("argv"), reader, writer, hub)
            else:
                await self._send(writer, {"error": {"code": "bad_request", "message": f"unknown op {op!r}"}})
        except (ConnectionError, BrokenPipeError):
            pass  # the client left; its stream was cancelled below
        finally:
            self._open -= 1
            self._last_activity = time.monotonic()
            writer.close()
            with contextlib.suppress(ConnectionError, BrokenPipeError):
                await writer.wait_closed()

    async def _generate(self, argv: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hub: Any) -> None:
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            await self._send(writer, {"error": {"code": "bad_request", "message": "argv must be a list of strings"}})
            return
        try:
            input_ids, kwargs, show_drafts = self.prepare(argv)
        except (ValueError, TypeError) as exc:  # the CLI's errors (InvalidArgumentError is a ValueError)
            await self._send(writer, {"error": {"code": "bad_request", "message": str(exc)}})
            return
        stream = hub.start(self.generator, input_ids, tokenizer=self.tokenizer, provisional=show_drafts, **kwargs)

        async def cancel_when_the_client_stops_writing() -> None:
            with contextlib.suppress(ConnectionError):
                await reader.read()  # returns at EOF: the client cancelled or left
            await stream.cancel()

        watcher = asyncio.create_task(cancel_when_the_client_stops_writing())
        try:
            async for event in stream.subscribe():
                await self._send(writer, {"event": event_to_dict(event)})
            try:
                out = await stream.result()
            except Exception as exc:  # the generation failed: its error event went out above
                await self._send(writer, {"error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}})
                return
            stats = out.stats
            completion = out.sequences[0, stats.prompt_tokens :].tolist()
            await self._send(
                writer, {"result": {"finish_reason": str(out.finish_reason), "stats": stats.as_dict(),
                                    "completion_ids": completion}},
            )  # fmt: skip
            self.served += 1
        finally:
            watcher.cancel()
            if not stream.done:
                await stream.cancel()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
        writer.write(json.dumps(obj).encode() + b"\n")
        await writer.drain()
