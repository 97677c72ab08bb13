"""Shared fixtures: tiny random causal LMs built from configs (no model hub).

The models come from the one factory of the tests and benchmarks,
:func:`specdec.bench.models.random_model`; this file holds the tests' tiny
configs of every promised architecture.

Models are cached per (architecture, seed, dtype, overrides) for the whole
session; tests must treat them as read-only (they are in eval mode and every
forward runs under ``inference_mode``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from specdec.bench.models import random_model

transformers.logging.set_verbosity_error()

VOCAB = 160
BOS, EOS, PAD = 1, 2, 0

#: Architectures the core issue promises; "mistral_sw" is mistral with a sliding
#: window (8) shorter than the generations in the tests.
ARCHS = ("llama", "mistral", "mistral_sw", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3", "gemma", "opt")

_SPECIAL = dict(bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)


def tiny_config(arch: str, *, vocab_size: int = VOCAB, **overrides: Any) -> PretrainedConfig:
    """A 2-layer, hidden-32 config of ``arch`` with in-vocabulary special tokens."""
    common = dict(vocab_size=vocab_size, max_position_embeddings=256, **_SPECIAL)
    if arch == "gpt2":
        values = dict(vocab_size=vocab_size, n_positions=256, n_embd=32, n_layer=2, n_head=4, **_SPECIAL)
    elif arch == "opt":
        values = dict(
            common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32
        )
    elif arch == "gpt_neox":
        values = dict(common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    else:
        values = dict(
            common,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=64,
        )
        if arch == "mistral_sw":
            arch = "mistral"
            values["sliding_window"] = 8
    values.update(overrides)
    return AutoConfig.for_model(arch, **values)


_MODELS: dict[tuple, PreTrainedModel] = {}

# Run the model tests on another device with SPECDEC_TEST_DEVICE=cuda (CI uses the CPU).
TEST_DEVICE = torch.device(os.environ.get("SPECDEC_TEST_DEVICE", "cpu"))


def build_model(
    arch: str = "llama",
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    logit_scale: float | None = None,
    **overrides: Any,
) -> PreTrainedModel:
    """A tiny random causal LM in eval mode, cached for the session.

    ``logit_scale`` multiplies the output embeddings so the next-token
    distributions are peaked (random init gives nearly uniform ones); with it
    the input and output embeddings are untied.
    """
    key = (arch, seed, dtype, logit_scale, repr(sorted(overrides.items())))
    if key not in _MODELS:
        if logit_scale is not None:
            overrides.setdefault("tie_word_embeddings", False)
        # Drawn in float32 on the CPU, then cast and moved: every dtype and device holds the same weights.
        model = random_model(tiny_config(arch, **overrides), seed=seed)
        if logit_scale is not None:
            model.get_output_embeddings().weight.mul_(logit_scale)
        _MODELS[key] = model.to(device=TEST_DEVICE, dtype=dtype)
    return _MODELS[key]


def make_prompt(length: int, seed: int = 2, vocab_size: int = VOCAB) -> torch.Tensor:
    """LongTensor [1, length] of random ids that avoid the special tokens."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (1, length), generator=generator).to(TEST_DEVICE)


_REFERENCES: dict[tuple, torch.Tensor] = {}


def hf_greedy(model: PreTrainedModel, input_ids: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> torch.Tensor:
    """``model.generate`` greedy reference, cached when no extra kwargs are given."""
    key = (id(model), tuple(input_ids.reshape(-1).tolist()), max_new_tokens) if not kwargs else None
    if key is not None and key in _REFERENCES:
        return _REFERENCES[key]
    out = model.generate(input_ids, do_sample=False, max_new_tokens=max_new_tokens, **kwargs)
    if key is not None:
        _REFERENCES[key] = out
    return out


@pytest.fixture(scope="session")
def tiny_lm() -> Callable[..., PreTrainedModel]:
    """Factory: ``tiny_lm(arch="llama", seed=0, dtype=torch.float32, logit_scale=None, **config_overrides)``."""
    return build_model


@pytest.fixture(scope="session")
def prompt() -> Callable[..., torch.Tensor]:
    """Factory: ``prompt(length, seed=2, vocab_size=VOCAB)`` -> LongTensor [1, length]."""
    return make_prompt


@pytest.fixture(scope="session")
def greedy_reference() -> Callable[..., torch.Tensor]:
    """Factory: ``greedy_reference(model, input_ids, max_new_tokens, **generate_kwargs)``."""
    return hf_greedy


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread: faster, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
