"""Every Python block in the README is (verbatim) part of a file under examples/, and those files run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_cli_signals import _spawn, tiny_dir  # noqa: E402,F401 - the tiny model folder fixture

from specdec.streaming.mqtt.broker import find_mosquitto, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _example_holding(block: str) -> Path | None:
    for path in sorted((ROOT / "examples").glob("*.py")):
        if block.strip() in path.read_text():
            return path
    return None


def test_every_python_block_is_an_example_file():
    blocks = _python_blocks()
    assert len(blocks) >= 3
    missing = [block.splitlines()[0] for block in blocks if _example_holding(block) is None]
    assert not missing, f"README blocks with no examples/*.py holding them verbatim (first lines): {missing}"


def _run_example(name: str, timeout: float = 600, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name)], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env={**ENV, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_draft_model_example_runs():
    assert "identical to target.generate" in _run_example("draft_model.py")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["api.py", "stream_hub.py", "quickstart.py"])
def test_default_model_examples_run(name):
    out = _run_example(name)
    assert "tok/s" in out or "identical to model.generate: yes" in out
    assert "walked" in out.lower() or "electric" in out.lower() or name == "quickstart.py"


@pytest.mark.mqtt
def test_mqtt_client_example_runs_against_a_worker(tiny_dir):  # noqa: F811
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    proc, _, err = _spawn(
        "serve", "--start-broker", "--broker", f"mqtt://127.0.0.1:{port}", "--target", str(tiny_dir),
        "--device", "cpu", "--max-new-tokens-cap", "64",
    )  # fmt: skip
    try:
        err.wait_for(lambda data: b"specdec serve: ready" in data, 120, proc)
        out = _run_example("mqtt_client.py", timeout=120, SPECDEC_BROKER=f"mqtt://127.0.0.1:{port}")
        assert out.strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_eagle_head_example_runs():
    assert "identical to target.generate: yes" in _run_example("eagle_head.py")


def test_openai_client_example_runs_against_a_real_http_server(tmp_path):
    from http_fixtures import save_model, start_cli_server

    server = start_cli_server(save_model(tmp_path / "model"), tmp_path / "server.log")
    try:
        out = _run_example("openai_client.py", timeout=300, SPECDEC_URL=server.url + "/v1")
    finally:
        server.stop()
    assert "'drafted'" in out and "'accepted'" in out  # the usage chunk with our acceptance figures
