"""Every CLI argument is checked before any model loads (torch is not even imported): one line, exit 2.

The cases run in one child process that calls ``specdec.cli.main`` once per
argument list and reports, for each, the exit status, what it wrote to stderr
and whether torch had been imported by then.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from specdec.cli_checks import looks_like_path, parse_broker_url
from specdec.errors import InvalidArgumentError

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import contextlib, io, json, sys
from specdec.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    results.append({"code": code, "err": err.getvalue(), "torch": "torch" in sys.modules})
print(json.dumps(results))
"""


def _run_cli(cases: list[list[str]], tmp_path: Path, **env: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(cases)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", **env},  # a hub that is not there
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bad_arguments_fail_fast_with_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "empty-folder").mkdir()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        cases = {
            "the prompt is empty": ["generate", "   "],
            "--top-p": ["generate", "hi", "--top-p", "2"],
            "--temperature": ["generate", "hi", "--temperature", "-1"],
            "--temperature ": ["generate", "hi", "--temperature", "0"],
            "--top-k": ["generate", "hi", "--top-k", "0"],
            "--seed": ["generate", "hi", "--seed", "-3"],
            "--max-new-tokens": ["generate", "hi", "--max-new-tokens", "0"],
            "--repetition-penalty": ["generate", "hi", "--repetition-penalty", "nan"],
            "--num-draft-tokens": ["generate", "hi", "--num-draft-tokens", "65"],
            "--dtype": ["generate", "hi", "--dtype", "int8"],
            "--device": ["generate", "hi", "--device", "tpu"],
            "no such file or folder": ["generate", "hi", "--target", "/definitely/not/here"],
            "no such file or folder ": ["generate", "hi", "--target", "./my-modle"],
            "not a .gguf": ["generate", "hi", "--target", "notes.txt"],
            "no config.json": ["generate", "hi", "--target", "empty-folder"],
            "no such file or folder  ": ["generate", "hi", "--draft", "missing/draft/model.gguf"],
            "cannot be reached": ["generate", "hi", "--target", "someone/some-model"],
            "mqtt:// or mqtts://": ["serve", "--broker", "http://127.0.0.1:1883"],
            "Port": ["serve", "--broker", "mqtt://127.0.0.1:70000"],
            "1..65535": ["serve", "--broker", "mqtt://127.0.0.1:0"],
            "no host": ["serve", "--broker", "mqtt://:1883"],
            "loopback": ["serve", "--start-broker", "--broker", "mqtt://192.0.2.1:1883"],
            "already taken": ["serve", "--start-broker", "--broker", f"mqtt://127.0.0.1:{taken}"],
            "--tls-ca": ["serve", "--broker", "mqtts://127.0.0.1:8883", "--tls-ca", "nope.pem"],
            "go together": ["serve", "--broker", "mqtt://127.0.0.1:1883", "--username", "u"],
            "and/or --broker mqtt://host:port": ["serve"],
        }
        results = _run_cli(list(cases.values()), tmp_path)
    for (needle, argv), result in zip(cases.items(), results, strict=False):
        assert result["code"] == 2, (argv, result)
        lines = result["err"].strip().splitlines()
        assert len(lines) == 1 and needle.strip() in lines[0], (argv, result["err"])
        assert not result["torch"], f"{argv} imported torch before refusing"


def test_sampling_rule_is_in_help():
    result = subprocess.run(
        [sys.executable, "-m", "specdec.cli", "generate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "Any of --temperature, --top-p, --top-k or --seed turns sampling on" in " ".join(result.stdout.split())


def test_help_and_import_do_not_load_torch(tmp_path):
    code = (
        "import sys, specdec, specdec.cli\n"
        "from specdec.cli import build_parser\n"
        "build_parser(with_bench=False)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
        "from specdec import SpeculativeGenerator, SpecDecError\n"  # the public names still resolve (lazily)
        "assert 'torch' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_hub_id_without_network_fails_fast(tmp_path):
    import time

    port = _closed_port()
    started = time.monotonic()
    (result,) = _run_cli([["generate", "hi", "--target", "org/model"]], tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    assert result["code"] == 2 and "HF_HUB_OFFLINE" in result["err"]
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    "reference, is_path",
    [("/abs/model", True), ("./rel", True), ("~/m", True), ("x.gguf", True), ("a/b/c", True),
     ("org/name", False), ("gpt2", False)],
)  # fmt: skip
def test_looks_like_path(reference, is_path):
    assert looks_like_path(reference) is is_path


def test_broker_url_defaults():
    assert parse_broker_url("mqtt://h").port == 1883
    assert parse_broker_url("mqtts://h").port == 8883
    assert parse_broker_url("mqtt://127.0.0.1:1999").loopback
    with pytest.raises(InvalidArgumentError):
        parse_broker_url("mqtt://h:1/path")
