"""``specdec up`` / ``down`` and ``generate`` through the kept-loaded worker: real processes, a real socket.

The worker must give the same tokens as the model run in the test's own
process, refuse bad requests with an error and keep serving, stop a
generation within one step when the client's Ctrl-C arrives, and the client
must import no torch.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_fixtures import default_sigint, save_tiny_model  # noqa: E402

from specdec import SpeculativeGenerator  # noqa: E402
from specdec.drafts import NGramDrafter  # noqa: E402
from specdec.streaming.resident import ResidentClient, ResidentError, find_worker, socket_path, worker_key  # noqa: E402
from specdec.streaming.resident.server import ResidentServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def env(run_dir) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "SPECDEC_RUN_DIR": str(run_dir)}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-resident"))


def _cli(env: dict[str, str], *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "specdec", *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def worker(tiny_dir, env, run_dir):
    """``specdec up`` for the tiny model; ``specdec down`` after the module (which the last test checks)."""
    done = _cli(env, "up", "--target", str(tiny_dir), "--idle-minutes", "10")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ready" in done.stderr
    path = socket_path_in(run_dir, tiny_dir)
    found = find_worker(path)
    assert found is not None
    yield found[1]
    _cli(env, "down", "--all")


def socket_path_in(run_dir: Path, tiny_dir: Path) -> Path:
    return run_dir / f"{worker_key(target=str(tiny_dir), draft='ngram', dtype='auto', device=None)}.sock"


def _reference(tiny_dir: Path, prompt: str, **kwargs) -> str:
    """The same generation in this process: the tokens the worker must give."""
    from transformers import AutoTokenizer

    model = LlamaForCausalLM.from_pretrained(tiny_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = SpeculativeGenerator(model, NGramDrafter()).generate(ids, **kwargs)
    return tokenizer.decode(out.sequences[0, ids.shape[1] :])


def test_up_then_generate_gives_the_same_tokens_as_this_process(worker, tiny_dir, env):
    done = _cli(env, "generate", "the quick brown fox", "--target", str(tiny_dir), "--no-chat",
                "--max-new-tokens", "24", "--verbose")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"kept loaded by `specdec up` (pid {worker['pid']})" in done.stderr
    assert "specdec: loading" not in done.stderr  # nothing loaded in the client
    assert "| length]" in done.stderr and "[24 tokens in" in done.stderr
    assert done.stdout.rstrip("\n") == _reference(tiny_dir, "the quick brown fox", max_new_tokens=24)


def test_sampling_with_a_seed_through_the_worker_is_the_seeded_run(worker, tiny_dir, env):
    done = _cli(env, "generate", "hello there", "--target", str(tiny_dir), "--no-chat", "--max-new-tokens", "16",
                "--temperature", "0.8", "--top-k", "50", "--seed", "7", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text, stats = done.stdout.rstrip("\n").rsplit("\n", 1)
    assert json.loads(stats)["new_tokens"] == 16
    expected = _reference(
        tiny_dir, "hello there", max_new_tokens=16, do_sample=True, temperature=0.8, top_k=50, seed=7
    )  # fmt: skip
    assert text == expected


def test_the_client_imports_no_torch(worker, tiny_dir, env):
    code = (
        "import sys\n"
        f"sys.argv = ['specdec', 'generate', 'hi', '--target', {str(tiny_dir)!r}, '--no-chat',\n"
        "            '--max-new-tokens', '2']\n"
        "from specdec.__main__ import run\n"
        "code = run()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules)\n"
        "print('HEAVY', heavy, code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "HEAVY [] 0" in done.stdout, done.stdout + done.stderr[-2000:]


def test_a_bad_request_gets_an_error_and_the_worker_keeps_serving(worker, tiny_dir, run_dir, env):
    path = socket_path_in(run_dir, tiny_dir)
    client = ResidentClient(path)
    for argv in (["hello", "--top-p", "2"], ["   "], ["hello", "--no-such-flag"], ["hello", "--max-new-tokens", "0"]):
        with pytest.raises(ResidentError) as caught:
            list(client.generate(argv))
        assert caught.value.code == "bad_request", argv
    raws = (b"not json\n", b'{"v": 2, "op": "ping"}\n', b'{"v": 1, "op": "explode"}\n', b'{"v": 1, "op": "generate"}\n')
    for raw in raws:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(raw)
            reply = json.loads(sock.makefile().readline())
        assert reply["error"]["code"] == "bad_request", raw
    # after every refusal the worker still serves
    messages = list(client.generate(["still serving", "--max-new-tokens", "3"]))
    assert messages[-1]["result"]["stats"]["new_tokens"] == 3


def test_a_cancel_that_comes_before_the_connection_is_not_lost(worker, tiny_dir, run_dir):
    """Ctrl-C between the handler's install and the connection: the generation still stops at once."""
    client = ResidentClient(socket_path_in(run_dir, tiny_dir))
    client.cancel()  # no generation in progress yet
    messages = list(client.generate(["once upon a time", "--no-chat", "--max-new-tokens", "100000"]))
    result = messages[-1]["result"]
    assert result["finish_reason"] == "cancelled"
    assert result["stats"]["new_tokens"] < 1000
    # and the flag does not outlive that generation
    again = list(client.generate(["once upon a time", "--no-chat", "--max-new-tokens", "3"]))
    assert again[-1]["result"]["finish_reason"] == "length"


def test_ctrl_c_on_the_client_cancels_within_a_step_and_the_worker_stays(worker, tiny_dir, run_dir, env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "specdec", "generate", "once upon a time", "--target", str(tiny_dir), "--no-chat",
         "--max-new-tokens", "100000", "--num-draft-tokens", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint,
    )  # fmt: skip
    # Ctrl-C once output arrives: the tiny model's whole 8k-token context (the most it can generate)
    # streamed in under 4 s on a fast machine with the default k, so k = 1 keeps it going for longer (~13 s
    # there), and the signal waits for bytes, not visible text (the output is mostly replacement characters).
    got = b""
    deadline = time.monotonic() + 60
    os.set_blocking(proc.stdout.fileno(), False)
    while len(got) < 20 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        try:
            got += os.read(proc.stdout.fileno(), 4096)
        except BlockingIOError:
            pass
    os.set_blocking(proc.stdout.fileno(), True)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert time.monotonic() - started < 10
    log = err.decode()
    assert "| cancelled]" in log and "Traceback" not in log
    assert 1 <= int(log.split("[")[-1].split(" tokens")[0]) < 100000
    info = ResidentClient(socket_path_in(run_dir, tiny_dir)).ping()
    assert info["pid"] == worker["pid"] and info["open"] == 0


def test_generate_without_a_worker_for_its_arguments_loads_in_process(worker, tiny_dir, env):
    """Another dtype is another worker key: this run must not use the float32-auto worker."""
    done = _cli(env, "generate", "abc", "--target", str(tiny_dir), "--no-chat", "--max-new-tokens", "2",
                "--dtype", "float64", "--verbose")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "specdec: loading" in done.stderr and "kept loaded" not in done.stderr


def test_up_twice_says_it_runs_and_down_stops_it(worker, tiny_dir, run_dir, env):
    again = _cli(env, "up", "--target", str(tiny_dir))
    assert again.returncode == 0 and f"already running (pid {worker['pid']})" in again.stderr
    down = _cli(env, "down", "--target", str(tiny_dir))
    assert down.returncode == 0 and f"stopped pid {worker['pid']}" in down.stderr
    assert not socket_path_in(run_dir, tiny_dir).exists()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(worker["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the worker process is still alive after `specdec down`")
    nothing = _cli(env, "down", "--all")
    assert "no worker was running" in nothing.stderr


# --------------------------------------------------------------------------- in-process pieces


def test_a_socket_nobody_listens_on_is_removed(tmp_path):
    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # bound, never listening, then closed: what a killed worker leaves
    assert path.exists()
    assert find_worker(path) is None
    assert not path.exists()


def test_the_server_stops_when_idle_and_refuses_a_bad_timeout(tmp_path):
    with pytest.raises(ValueError, match="idle_timeout_s"):
        ResidentServer(None, None, path=tmp_path / "x.sock", describe={}, prepare=lambda a: None, idle_timeout_s=0)
    server = ResidentServer(None, None, path=tmp_path / "w.sock", describe={"target": "t"}, prepare=lambda a: None,
                            idle_timeout_s=0.5)  # fmt: skip
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.update(reason=asyncio.run(server.run())))
    thread.start()
    deadline = time.monotonic() + 10
    while not (tmp_path / "w.sock").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ResidentClient(tmp_path / "w.sock").ping()["target"] == "t"
    thread.join(timeout=15)
    assert result == {"reason": "idle"} and not (tmp_path / "w.sock").exists()


def test_worker_key_follows_the_model_arguments(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    a = worker_key(target=str(folder), draft=None, dtype="auto", device=None)
    assert a == worker_key(target=str(folder / ".." / "m"), draft="ngram", dtype=None, device="auto")
    assert a != worker_key(target=str(folder), draft="self", dtype="auto", device=None)
    assert a != worker_key(target=str(folder), draft=None, dtype="float32", device=None)
    assert socket_path(a).name == f"{a}.sock"
