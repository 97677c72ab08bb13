"""The client side: the standard library only (no torch), so ``specdec generate`` starts in a blink."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import StreamingError
from .paths import run_dir

__all__ = ["ResidentClient", "ResidentError", "find_worker", "worker_sockets"]

PROTOCOL_VERSION = 1
_MAX_LINE = 16 * 1024 * 1024  # one event or result; the completion ids of a long answer fit easily


class ResidentError(StreamingError):
    """A kept-loaded worker refused a request or failed it (``code``: ``bad_request``, ``internal``, ...)."""

    def __init__(self, message: str, code: str = "internal") -> None:
        super().__init__(message)
        self.code = code


class ResidentClient:
    """Talks to the worker listening on ``path`` (one connection per request)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._sock: socket.socket | None = None
        self._cancel_requested = False

    def _connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        return sock

    def _lines(self, sock: socket.socket) -> Iterator[dict[str, Any]]:
        buffer = b""
        while True:
            newline = buffer.find(b"\n")
            if newline >= 0:
                line, buffer = buffer[:newline], buffer[newline + 1 :]
                if line.strip():
                    yield json.loads(line)
                continue
            if len(buffer) > _MAX_LINE:
                raise ResidentError("the worker sent a line longer than 16 MiB")
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk

    def _call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        sock = self._connect(timeout)
        try:
            sock.sendall(json.dumps({"v": PROTOCOL_VERSION, **message}).encode() + b"\n")
            for reply in self._lines(sock):
                if "error" in reply:
                    raise _refusal(reply["error"])
                return reply
            raise ResidentError("the worker closed the connection without answering")
        finally:
            sock.close()

    def ping(self, timeout: float = 2.0) -> dict[str, Any]:
        """The worker's description (pid, model, draft, dtype, device); raises ``OSError`` when none listens."""
        return self._call({"op": "ping"}, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the worker to stop (it finishes open generations first)."""
        self._call({"op": "stop"}, timeout)

    def generate(self, argv: list[str]) -> Iterator[dict[str, Any]]:
        """Send ``specdec generate`` arguments; yield ``{"event": ...}`` dicts, then ``{"result": ...}``.

        Raises :class:`ResidentError` when the worker refuses or fails the
        request. :meth:`cancel` (from a signal handler, say) stops the
        generation within one step; the events up to there and the result still
        arrive.
        """
        try:
            sock = self._connect(timeout=10.0)
        except BaseException:
            self._cancel_requested = False
            raise
        try:
            sock.sendall(json.dumps({"v": PROTOCOL_VERSION, "op": "generate", "argv": argv}).encode() + b"\n")
            self._sock = sock  # from here cancel() shuts it itself
            if self._cancel_requested:  # cancel() came before: it had no socket to shut yet
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            sock.settimeout(None)  # a generation takes as long as it takes; cancel() ends it
            ended = False
            for reply in self._lines(sock):
                if "error" in reply:
                    raise _refusal(reply["error"])
                yield reply
                if "result" in reply:
                    ended = True
                    return
            if not ended:
                raise ResidentError("the worker closed the connection before the end of the stream (did it stop?)")
        finally:
            self._sock = None
            self._cancel_requested = False
            sock.close()

    def cancel(self) -> None:
        """Cancel the generation in progress, or the one being started: shut down the writing half of the
        connection (at once, or as soon as :meth:`generate` has sent its request)."""
        self._cancel_requested = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)


def _refusal(error: Any) -> ResidentError:
    if not isinstance(error, dict):
        return ResidentError(str(error))
    return ResidentError(str(error.get("message", "refused")), str(error.get("code", "internal")))


def find_worker(path: Path, timeout: float = 2.0) -> tuple[ResidentClient, dict[str, Any]] | None:
    """The worker at ``path`` and its description, or ``None``; a socket nobody listens on is removed."""
    if not path.exists():
        return None
    client = ResidentClient(path)
    try:
        return client, client.ping(timeout)
    except ConnectionRefusedError:
        with contextlib.suppress(OSError):
            path.unlink()  # left by a worker that was killed
        return None
    except (OSError, ResidentError, ValueError):
        return None


def worker_sockets() -> list[Path]:
    """The sockets in :func:`~.paths.run_dir`, live or stale."""
    return sorted(run_dir().glob("*.sock"))
