"""A tiny random Llama saved as an HF folder, and a Ctrl-C helper, for tests that run real ``specdec`` processes."""

from __future__ import annotations

import signal
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mqtt_fixtures import tiny_tokenizer


def save_tiny_model(folder: Path) -> Path:
    """A tiny random Llama and a byte-level tokenizer in ``folder``; no EOS, long context."""
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=8192, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def default_sigint() -> None:
    """``preexec_fn`` for a child that must take Ctrl-C as from a terminal: a test run started in a
    background job inherits SIGINT ignored, and Python then installs no handler of its own."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
