"""Training data for a head: the target's own answers and its hidden states, on disk, streamed back.

For each prompt the target answers greedily; one forward over prompt + answer records the hidden
states of the head's ``target_layers`` and the final normed hidden state (from which the target's
next-token distribution is recomputed during training, so full-vocabulary logits are never
stored). Everything goes to a folder as float16 (``features.bin``: [tokens, layers + 1, hidden])
and int32 (``tokens.bin``) with an ``index.json`` of (offset, length) per sequence, written last:
a folder without it is incomplete and is rebuilt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import PreTrainedModel

from specdec import InvalidArgumentError

__all__ = ["read_prompts", "HiddenStateData", "build_data", "encode_prompt", "capture_layers"]


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line) or a ``.jsonl`` file (``{"prompt": ...}`` per line)."""
    file = Path(path)
    if not file.is_file():
        raise InvalidArgumentError(f"prompt file {file} does not exist")
    prompts = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if file.suffix == ".jsonl":
            try:
                item = json.loads(line)
                text = item["prompt"] if isinstance(item, dict) else None
            except (json.JSONDecodeError, KeyError):
                text = None
            if not isinstance(text, str):
                raise InvalidArgumentError(f"{file}:{number}: expected a JSON object with a string 'prompt'")
            prompts.append(text)
        else:
            prompts.append(line.strip())
    if not prompts:
        raise InvalidArgumentError(f"prompt file {file} holds no prompts (one per line, or JSONL with 'prompt')")
    return prompts


def encode_prompt(tokenizer: Any, prompt: str | list[int], chat: bool | None = None) -> torch.Tensor:
    """LongTensor [1, length]; the chat template is applied when the tokenizer has one (``chat=None``).

    A prompt given as token ids is used as is (no tokenizer needed).
    """
    if not isinstance(prompt, str):
        return torch.tensor([list(prompt)], dtype=torch.long)
    if tokenizer is None:
        raise InvalidArgumentError("text prompts need a tokenizer")
    use_chat = chat if chat is not None else bool(getattr(tokenizer, "chat_template", None))
    if use_chat:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        return encoded if isinstance(encoded, torch.Tensor) else encoded["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def capture_layers(target: PreTrainedModel, token_ids: torch.Tensor, layers: tuple[int, ...]) -> torch.Tensor:
    """Hidden states ``[length, len(layers), hidden]`` of one full forward (HF ``output_hidden_states`` indices)."""
    with torch.inference_mode():
        out = target(input_ids=token_ids.reshape(1, -1), output_hidden_states=True, use_cache=False)
    states = out.hidden_states
    if states is None:
        raise InvalidArgumentError(f"{type(target).__name__} returns no hidden states; it cannot train a head")
    return torch.stack([states[i][0] for i in layers], dim=1)


@dataclass
class HiddenStateData:
    """A built data folder, read back one sequence at a time through memory maps."""

    folder: Path
    offsets: list[int]
    lengths: list[int]
    num_layers: int  # stored layers: the head's target layers, then the final hidden state
    hidden_size: int
    token_counts: list[int]  # [target_vocab] occurrences, for choosing a draft vocabulary

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def __len__(self) -> int:
        return len(self.offsets)

    @staticmethod
    def open(folder: str | Path) -> HiddenStateData | None:
        index = Path(folder) / "index.json"
        if not index.is_file():
            return None
        meta = json.loads(index.read_text())
        return HiddenStateData(Path(folder), meta["offsets"], meta["lengths"], meta["num_layers"],
                               meta["hidden_size"], meta["token_counts"])  # fmt: skip

    def sequence(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens LongTensor [T], features FloatTensor [T, num_layers, hidden])`` of sequence ``i``."""
        total = self.num_tokens
        tokens = np.memmap(self.folder / "tokens.bin", dtype=np.int32, mode="r", shape=(total,))
        feats = np.memmap(self.folder / "features.bin", dtype=np.float16, mode="r",
                          shape=(total, self.num_layers, self.hidden_size))  # fmt: skip
        a, b = self.offsets[i], self.offsets[i] + self.lengths[i]
        return torch.from_numpy(np.array(tokens[a:b])).long(), torch.from_numpy(np.array(feats[a:b])).float()

    def iterate(self, order: list[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in order:
            yield self.sequence(i)


def build_data(
    target: PreTrainedModel,
    tokenizer: Any,
    prompts: list[str] | list[list[int]],
    folder: str | Path,
    *,
    layers: tuple[int, ...],
    max_new_tokens: int,
    chat: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> HiddenStateData:
    """Let the target answer each prompt and store the hidden states (reused when already complete)."""
    folder = Path(folder)
    existing = HiddenStateData.open(folder)
    final = _num_layers(target)
    stored = tuple(layers) + (final,)
    if existing is not None and existing.num_layers == len(stored) and len(existing) == len(prompts):
        return existing
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").unlink(missing_ok=True)
    vocab = int(cast(torch.Tensor, target.get_input_embeddings().weight).shape[0])
    counts = torch.zeros(vocab, dtype=torch.long)
    offsets, lengths, offset, hidden = [], [], 0, 0
    device = next(target.parameters()).device
    with open(folder / "tokens.bin", "wb") as tok_file, open(folder / "features.bin", "wb") as feat_file:
        for prompt in prompts:
            input_ids = encode_prompt(tokenizer, prompt, chat).to(device)
            with torch.inference_mode():
                sequence = target.generate(  # type: ignore[operator]  # generate comes from GenerationMixin
                    input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                    max_new_tokens=max_new_tokens, pad_token_id=_pad_id(target, tokenizer),
                )[0]  # fmt: skip
            feats = capture_layers(target, sequence, stored)  # [T, layers + 1, hidden]
            hidden = feats.shape[-1]
            tok_file.write(sequence.to("cpu", torch.int32).numpy().tobytes())
            feat_file.write(feats.to("cpu", torch.float16).numpy().tobytes())
            counts += torch.bincount(sequence.cpu(), minlength=vocab)[:vocab]
            offsets.append(offset)
            lengths.append(int(sequence.shape[0]))
            offset += int(sequence.shape[0])
            if progress is not None:
                progress(int(sequence.shape[0]))
    meta = dict(offsets=offsets, lengths=lengths, num_layers=len(stored), hidden_size=hidden,
                token_counts=counts.tolist())  # fmt: skip
    (folder / "index.json").write_text(json.dumps(meta))
    return HiddenStateData(folder, offsets, lengths, len(stored), hidden, counts.tolist())


def _num_layers(target: PreTrainedModel) -> int:
    text = target.config.get_text_config(decoder=True) if hasattr(target.config, "get_text_config") else target.config
    return int(getattr(text, "num_hidden_layers", None) or text.n_layer)


def _pad_id(target: PreTrainedModel, tokenizer: Any) -> int | None:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        eos = getattr(target.generation_config, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, list) else eos
    return pad
