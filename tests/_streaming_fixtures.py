"""Shared builders for the streaming tests: tiny random models and offline tokenizers (no hub)."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from specdec.bench.models import byte_level_bpe, random_llama

CORPUS = [
    "héllo wörld 日本語 🙂",
    "hello world, the quick brown fox jumps over the lazy dog",
    "wörld héllo café naïve über straße",
    "日本語 の テキスト です 🙂🙂",
    "the lazy dog sleeps; the fox runs. 🙂 héllo again",
] * 4


@functools.cache
def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style): multi-byte characters are split across byte tokens."""
    return byte_level_bpe(CORPUS, vocab_size=300)


@functools.cache
def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece/Llama style: ``▁`` for spaces, BPE with byte fallback for unseen characters."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=200, min_frequency=2, special_tokens=["<unk>", "<s>", "</s>"])
    # Leave the emoji and 語 out of the training text so they go through byte fallback.
    tok.train_from_iterator([line.replace("🙂", "").replace("語", "") for line in CORPUS], trainer=trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    data["model"]["byte_fallback"] = True
    data["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ],
    }
    tok = Tokenizer.from_str(json.dumps(data))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", clean_up_tokenization_spaces=False
    )


def tiny_llama(vocab_size: int = 128, seed: int = 0, hidden: int = 32, layers: int = 2) -> LlamaForCausalLM:
    return random_llama(vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_kv_heads=2,
                        max_positions=512, special_tokens=False, seed=seed)


def run(coro: Any, timeout: float = 30.0) -> Any:
    """Run a coroutine on a fresh event loop with a hard timeout (no pytest-asyncio here)."""
    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("specdec-")]


class WrappedDrafter:
    """Delegates to a real drafter; optionally pauses at one propose call or raises at another."""

    def __init__(self, inner: Any, *, pause_at: int | None = None, fail_at: int | None = None) -> None:
        self.inner = inner
        self.default_num_draft_tokens = inner.default_num_draft_tokens
        self.vocab_size = getattr(inner, "vocab_size", None)
        self.pause_at = pause_at
        self.fail_at = fail_at
        self.paused = threading.Event()  # set when generation reached pause_at
        self.resume = threading.Event()  # set by the test to let it go on
        self.proposals = 0

    def begin(self, context: Any) -> None:
        self.proposals = 0
        self.inner.begin(context)

    def propose(self, max_tokens: int) -> Any:
        if self.proposals == self.pause_at:
            self.paused.set()
            assert self.resume.wait(10), "the test never resumed generation"
        if self.proposals == self.fail_at:
            raise RuntimeError("drafter exploded on purpose")
        self.proposals += 1
        return self.inner.propose(max_tokens)

    def update(self, token_ids: list[int], num_accepted: int) -> None:
        self.inner.update(token_ids, num_accepted)

    def end(self) -> None:
        self.inner.end()


class FakeGenerator:
    """Stands in for SpeculativeGenerator: one token per step, token i = i % 50, drafts of 2."""

    def __init__(self, steps: int = 50, *, gate: threading.Event | None = None) -> None:
        self.steps = steps
        self.gate = gate

    def generate(self, input_ids: Any, on_tokens: Any = None, cancel: Any = None, **kwargs: Any) -> Any:
        from specdec import SpecOutput, SpecStats, VerifiedBlock

        prompt = torch.as_tensor(input_ids).reshape(1, -1)
        tokens: list[int] = []
        stats = SpecStats(prompt_tokens=prompt.shape[1])
        finish = "length"
        for step in range(self.steps):
            if self.gate is not None:
                self.gate.wait(10)
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            token = step % 50
            on_tokens.on_draft(step, [token, token + 1])
            on_tokens.on_block(VerifiedBlock(step=step, row=0, token_ids=(token,), drafted=2, accepted=1))
            stats.record_step(2, 1)
            tokens.append(token)
        stats.new_tokens = len(tokens)
        return SpecOutput(sequences=torch.cat([prompt, torch.tensor([tokens])], 1), stats=stats, finish_reason=finish)
