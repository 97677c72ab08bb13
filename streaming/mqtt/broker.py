"""Run a private mosquitto on loopback: for tests, benchmarks and ``specdec serve --start-broker``.

Example::

    with LocalMosquitto() as broker:      # a free port on 127.0.0.1, its own config file
        url = broker.url                   # mqtt://127.0.0.1:PORT
        broker.restart()                   # same port; persistence is off, so state is lost

The broker's log goes to its stderr, which this process opens as the file
``log_path`` and hands over: mosquitto never has to open a file itself, so the
log works even when mosquitto, started as root, drops to its own user (which
could not write into our private temporary folder). A broker we started is
stopped by :meth:`LocalMosquitto.close` (and by ``with``); on Linux it is also
told to exit when this process dies (``PR_SET_PDEATHSIG``), so a killed
``specdec serve --start-broker`` leaves no orphan holding the port. A port
that something already listens on is refused before starting, with a message
that says so (no silent reuse of an orphan).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .errors import TransportError

__all__ = ["LocalMosquitto", "find_mosquitto", "free_port"]


def find_mosquitto() -> str | None:
    """The mosquitto broker binary, or None (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that makes the child get SIGTERM when this process dies.

    The kernel ties the signal to the thread that forks, so it is only used from the main thread
    (a broker started from a worker thread would be stopped when that thread ends).
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        libc.prctl(pr_set_pdeathsig, 15)  # SIGTERM

    return hook


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LocalMosquitto:
    """A mosquitto process listening on ``host:port`` only, anonymous, persistence off.

    ``config_text`` replaces the generated config file (it must contain a
    ``listener`` on ``host:port``): the tests use it to run the example config
    of ``examples/mosquitto`` with a password file and an ACL.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | None = None,
        config_text: str | None = None,
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise TransportError("the mosquitto binary is not installed (Debian/Ubuntu: apt-get install mosquitto)")
        self.binary: str = found
        self.host = host
        self.port = port or free_port(host)
        self._dir = Path(tempfile.mkdtemp(prefix="specdec-mosquitto-"))
        self.config_path = self._dir / "mosquitto.conf"
        self.log_path = self._dir / "mosquitto.log"
        if config_text is not None:
            # A caller's own config (e.g. passwords and an ACL); it must listen on host:port.
            self.config_path.write_text(config_text)
        else:
            self.config_path.write_text(self._default_config())
        self._proc: subprocess.Popen[bytes] | None = None

    def _default_config(self) -> str:
        return "\n".join(
            [
                f"listener {self.port} {self.host}",
                "allow_anonymous true",
                "persistence false",
                "max_queued_messages 100000",
                "max_inflight_messages 0",
                "set_tcp_nodelay true",
                "log_dest stderr",  # our process opens log_path and hands it over as stderr
                # Started as root, mosquitto would switch to the "mosquitto" user, which drops the
                # parent-death signal (and could not read our private folder): stay the user we are.
                *(["user root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
                "log_type error",
                "log_type warning",
                "",
            ]
        )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (benchmarks read its CPU time)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> LocalMosquitto:
        if self.running:
            return self
        if _listening(self.host, self.port):
            raise TransportError(
                f"something already listens on {self.host}:{self.port} (another broker? perhaps one left running "
                "by an earlier run); stop it or pick another port"
            )
        # stderr goes to a file we open (not a pipe nobody reads, not a path mosquitto must be allowed to write).
        stderr_path = self.log_path
        with stderr_path.open("ab") as stderr:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=_die_with_parent(),
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = stderr_path.read_text(errors="replace")[-2000:]
                raise TransportError(f"mosquitto exited at start (code {self._proc.returncode}): {err.strip()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise TransportError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout_s} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LocalMosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
