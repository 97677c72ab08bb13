"""Fixtures for the HTTP tests: a tiny random model saved with a tokenizer, served by a real process.

``served_model_dir`` writes a 2-layer random Llama and an offline byte-level BPE
tokenizer (with a small chat template) to a folder; ``start_server`` launches
``specdec serve --http`` (or ``tests/_http_server.py`` for custom limits) on a
free loopback port and waits for ``/health``.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "héllo wörld, café naïve über straße 🙂",
    "a stream of tokens flows over http to every client",
    "speculative decoding drafts ahead and the target verifies",
    "<|user|> <|assistant|> hello there",
] * 8

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@functools.cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, min_frequency=2, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", clean_up_tokenization_spaces=False)
    out.chat_template = CHAT_TEMPLATE
    return out


@functools.cache
def tiny_model() -> LlamaForCausalLM:
    """2 layers, hidden 32; no EOS, so every generation runs to max_tokens (or a stop string)."""
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    return model


def save_model(folder: Path) -> Path:
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def reference_text(prompt_ids: list[int], max_tokens: int) -> str:
    """The target's own greedy completion (HF ``generate``), decoded as the server decodes it."""
    with torch.inference_mode():
        out = tiny_model().generate(
            torch.tensor([prompt_ids]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    return tiny_tokenizer().decode(out[0, len(prompt_ids) :].tolist(), skip_special_tokens=True)


def prompt_ids(prompt: str) -> list[int]:
    return tiny_tokenizer()(prompt)["input_ids"]


def chat_ids(messages: list[dict[str, str]]) -> list[int]:
    ids = tiny_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process on a free loopback port; ``url`` is its base URL. Stop with :meth:`stop`."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = open(log, "w")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = float(os.environ.get("SPECDEC_TEST_SERVER_TIMEOUT", "600"))) -> None:
        # Generous: on a shared 2-core machine under load, importing torch alone has taken minutes.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not come up in {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def start_cli_server(model_dir: Path, log: Path) -> Server:
    """``specdec serve --http`` on the saved model (float32, CPU, n-gram drafter)."""
    port = free_port()
    args = [sys.executable, "-m", "specdec.cli", "serve", "--target", str(model_dir), "--dtype", "float32",
            "--device", "cpu", "--draft", "ngram", "--num-draft-tokens", "4",
            "--http", f"127.0.0.1:{port}"]  # fmt: skip
    return Server(args, port, log)


def start_custom_server(model_dir: Path, log: Path, **settings: Any) -> Server:
    """``tests/_http_server.py``: the same model behind ``HttpSettings(**settings)``."""
    import json

    port = free_port()
    args = [sys.executable, str(ROOT / "tests" / "_http_server.py"), str(model_dir), str(port), json.dumps(settings)]
    return Server(args, port, log)
