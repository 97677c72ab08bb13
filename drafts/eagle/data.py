"""Prompts for training a head: reading prompt files, encoding prompts, reading a target's hidden states.

The data itself (the target's answers and hidden states) is built by :mod:`.answers` and stored
by :mod:`.shards`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from specdec import InvalidArgumentError

__all__ = ["read_prompts", "encode_prompt", "capture_layers", "pad_token_id"]


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


def pad_token_id(target: PreTrainedModel, tokenizer: Any) -> int:
    """The id padded batches are filled with: the tokenizer's pad id, else an EOS id, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        eos = getattr(target.generation_config, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, list) else eos
    return int(pad) if pad is not None else 0
