"""Signals sent to real ``specdec`` processes: Ctrl-C during and outside generation, SIGINT/SIGTERM to ``serve``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_fixtures import default_sigint, save_tiny_model  # noqa: E402

from specdec.streaming.mqtt.broker import find_mosquitto, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-cli"))


class _Reader:
    """Collects a pipe's bytes on a thread so the test can wait for some without blocking."""

    def __init__(self, pipe) -> None:
        self.data = bytearray()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for chunk in iter(lambda: pipe.read1(4096), b""):
            self.data.extend(chunk)

    def wait_for(self, predicate, timeout: float, proc) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(bytes(self.data)):
            assert proc.poll() is None, f"exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    def text(self) -> str:
        self._thread.join(timeout=10)
        return self.data.decode(errors="replace")


def _spawn(*argv: str) -> tuple[subprocess.Popen, _Reader, _Reader]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "specdec", *argv], cwd=ROOT, env=ENV, preexec_fn=default_sigint,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    return proc, _Reader(proc.stdout), _Reader(proc.stderr)


def _no_crash(err: str) -> None:
    assert "Traceback" not in err and "terminate called" not in err and "Aborted" not in err, err[-3000:]


def test_ctrl_c_during_generation_prints_text_and_stats_and_exits_130(tiny_dir):
    proc, out, err = _spawn(
        "generate", "the quick brown fox", "--target", str(tiny_dir), "--no-chat", "--device", "cpu",
        "--max-new-tokens", "8000", "--verbose",
    )  # fmt: skip
    try:
        out.wait_for(lambda data: len(data.decode(errors="replace").strip()) > 20, 120, proc)  # generation is under way
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        code = proc.wait(timeout=30)
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    text, log = out.text(), err.text()
    assert code == 130, log[-3000:]
    _no_crash(log)
    assert "| cancelled]" in log  # the stats line, with the finish reason
    tokens = int(log.split("[")[-1].split(" tokens")[0])
    assert 1 <= tokens < 8000
    assert text.strip()  # the text so far stays on stdout
    assert stopped_in < 10
    assert "device cpu; dtype float32 (auto: CPU capability" in log or "dtype bfloat16 (auto: CPU" in log  # --verbose


def test_ctrl_c_while_loading_exits_130_quietly(tiny_dir):
    """Ctrl-C right after "loading": exit 130, no traceback, no stats.

    The tiny model loads in about half a second, so on a loaded machine the
    signal can land later (during or after the generation). Every attempt must
    then still end well (130 with cancelled stats, or 0 when it had finished);
    at least one of three must land while loading.
    """
    landed_while_loading = False
    for _ in range(3):
        proc, out, err = _spawn("generate", "hello", "--target", str(tiny_dir), "--no-chat", "--max-new-tokens", "8")
        err.wait_for(lambda data: b"specdec: loading" in data, 120, proc)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        log = err.text()
        _no_crash(log)
        assert code in (0, 130), log[-3000:]  # never killed by the signal (-2)
        if "tokens in" not in log:
            assert code == 130, log[-3000:]
            landed_while_loading = True
            break
        assert ("| cancelled]" in log) == (code == 130), log[-3000:]
    assert landed_while_loading


def test_ctrl_c_after_the_output_exits_0_or_130_never_by_signal(tiny_dir):
    """The process leaves without the interpreter's slow teardown, so a late Ctrl-C cannot kill it by signal."""
    proc, out, err = _spawn("generate", "hello", "--target", str(tiny_dir), "--no-chat", "--max-new-tokens", "8")
    err.wait_for(lambda data: b"tokens in" in data, 120, proc)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=60)
    _no_crash(err.text())
    assert code in (0, 130)
    assert time.monotonic() - started < 1.5  # no seconds of teardown after the stats line


def test_ctrl_c_while_importing_the_cli_exits_130_quietly():
    """The entry point imports the CLI inside its try: a KeyboardInterrupt there is a quiet 130."""
    code = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *a, **k):\n"
        "    if name == 'specdec.cli': raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = interrupted\n"
        "from specdec.__main__ import run\n"
        "sys.exit(run())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 130 and result.stderr == ""


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.mqtt
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_on_signal_with_its_broker(tiny_dir, sig):
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    proc, out, err = _spawn(
        "serve", "--start-broker", "--broker", f"mqtt://127.0.0.1:{port}", "--target", str(tiny_dir),
        "--device", "cpu", "--max-new-tokens-cap", "16",
    )  # fmt: skip
    try:
        err.wait_for(lambda data: b"specdec serve: ready" in data, 120, proc)
        assert _listening(port)
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = err.text()
    assert code == 0, log[-3000:]
    _no_crash(log)
    ready = next(line for line in log.splitlines() if "ready" in line)
    assert f"mqtt://127.0.0.1:{port} (started here)" in ready and "specdec/v1/requests" in ready
    assert str(tiny_dir) in ready and "draft ngram" in ready
    assert "stopped" in log
    assert not _listening(port)  # the broker it started is gone; the next run will not meet an orphan


@pytest.mark.mqtt
def test_serve_refuses_a_taken_port_before_loading(tiny_dir):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "specdec.cli", "serve", "--start-broker", "--broker", f"mqtt://127.0.0.1:{port}",
             "--target", str(tiny_dir)],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2
    assert "already taken" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_serve_without_a_broker_says_it_cannot_connect(tiny_dir):
    port = free_port()  # nothing listens there
    proc, out, err = _spawn("serve", "--broker", f"mqtt://127.0.0.1:{port}", "--target", str(tiny_dir))
    try:
        err.wait_for(lambda data: b"specdec serve: cannot connect" in data, 120, proc)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = err.text()
    assert code == 0, log[-3000:]
    assert "--start-broker" in log
    _no_crash(log)
