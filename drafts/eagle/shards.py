"""Training data on disk in shards, each written whole or not at all, so an interrupted build resumes.

A data folder holds ``settings.json`` (what every shard was built with) and ``shard-NNNNN/``
folders; shard ``i`` holds the answers to prompts ``i * shard_size ... (i + 1) * shard_size - 1``:

- ``tokens.bin`` int32 [N]: prompt + answer of each sequence, one after another;
- ``features.bin`` float16 [N, layers, hidden]: the target's hidden states at each position
  (the head's target layers, then the final normed state);
- ``top_ids.bin`` int32 [N, topk] and ``top_logprobs.bin`` float16 [N, topk]: the target's most
  likely next tokens after each position (training's soft targets, so the target's
  full-vocabulary logits are never recomputed);
- ``counts.npy`` int64 [vocab]: token occurrences (to choose a draft vocabulary);
- ``index.json``: offsets, lengths, prompt lengths and a fingerprint of the shard's prompts.

A shard is built in ``shard-NNNNN.partial/`` and renamed when complete (``index.json`` last), so
a crash leaves either a complete shard or a partial folder that the next build deletes. Building
again skips complete shards; a shard whose prompts changed is rebuilt; other settings are refused.
A shorter prompt list reads the first shards only and leaves the others in place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import PreTrainedModel

from specdec import InvalidArgumentError

from .answers import answer_batch
from .data import encode_prompt

__all__ = ["DataSettings", "Shard", "ShardedData", "build_shards", "build_views"]


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    """What every shard of a folder is built with (a folder refuses a build with other settings)."""

    layers: tuple[int, ...]  # HF hidden-state indices stored, the final normed state last
    max_new_tokens: int
    topk: int = 32
    temperature: float = 0.0  # 0: greedy answers; > 0: sampled (another view of the target)
    seed: int = 0  # sampling seed (shard i draws from seed, i)
    chat: bool | None = None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers)}


@dataclass(frozen=True)
class Shard:
    """One complete shard, read back through memory maps."""

    folder: Path
    offsets: list[int]
    lengths: list[int]
    prompt_lengths: list[int]
    num_layers: int
    hidden_size: int
    topk: int

    @staticmethod
    def open(folder: Path) -> Shard | None:
        index = folder / "index.json"
        if not index.is_file():
            return None
        meta = json.loads(index.read_text())
        return Shard(folder, meta["offsets"], meta["lengths"], meta["prompt_lengths"], meta["num_layers"],
                     meta["hidden_size"], meta["topk"])  # fmt: skip

    def _map(self, name: str, dtype: Any, *shape: int) -> np.memmap:
        return np.memmap(self.folder / name, dtype=dtype, mode="r", shape=(sum(self.lengths), *shape))

    def read(self, i: int) -> dict[str, torch.Tensor]:
        """Sequence ``i``: ``tokens`` [T], ``features`` [T, layers, hidden], ``top_ids`` and ``top_logprobs`` [T, k]."""
        a, b = self.offsets[i], self.offsets[i] + self.lengths[i]
        return {
            "tokens": torch.from_numpy(np.array(self._map("tokens.bin", np.int32)[a:b])).long(),
            "features": torch.from_numpy(
                np.array(self._map("features.bin", np.float16, self.num_layers, self.hidden_size)[a:b])
            ).float(),
            "top_ids": torch.from_numpy(np.array(self._map("top_ids.bin", np.int32, self.topk)[a:b])).long(),
            "top_logprobs": torch.from_numpy(np.array(self._map("top_logprobs.bin", np.float16, self.topk)[a:b]))
            .float(),
        }  # fmt: skip


class ShardedData:
    """Every complete shard of one or more data folders, as one list of sequences."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        if not shards:
            raise InvalidArgumentError("no complete data shards")
        self.shards = list(shards)
        self._where = [(s, i) for s, shard in enumerate(self.shards) for i in range(len(shard.lengths))]
        self.num_layers, self.hidden_size = self.shards[0].num_layers, self.shards[0].hidden_size
        if any((s.num_layers, s.hidden_size) != (self.num_layers, self.hidden_size) for s in self.shards):
            raise InvalidArgumentError("data shards store hidden states of different shapes")

    @staticmethod
    def open(*folders: str | Path) -> ShardedData:
        shards = [
            shard
            for folder in folders
            for path in sorted(Path(folder).glob("shard-?????"))
            if (shard := Shard.open(path)) is not None
        ]
        return ShardedData(shards)

    def __len__(self) -> int:
        return len(self._where)

    @property
    def num_tokens(self) -> int:
        return sum(sum(s.lengths) for s in self.shards)

    @property
    def token_counts(self) -> torch.Tensor:
        """LongTensor [vocab]: occurrences of each token id over every shard."""
        return torch.from_numpy(sum(np.load(s.folder / "counts.npy") for s in self.shards)).long()

    def read(self, i: int) -> dict[str, torch.Tensor]:
        s, j = self._where[i]
        return self.shards[s].read(j)

    def prompt_length(self, i: int) -> int:
        s, j = self._where[i]
        return self.shards[s].prompt_lengths[j]

    def iterate(self, order: list[int]) -> Iterator[dict[str, torch.Tensor]]:
        for i in order:
            yield self.read(i)


def _fingerprint(prompts: Sequence[str | list[int]]) -> str:
    return hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()[:16]


def build_shards(
    target: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str | list[int]],
    folder: str | Path,
    settings: DataSettings,
    *,
    shard_size: int = 64,
    batch_size: int = 16,
    pad_id: int = 0,
    eos_ids: tuple[int, ...] = (),
    progress: Callable[[int], None] | None = None,
) -> ShardedData:
    """Answer ``prompts`` in shards of ``shard_size`` (``batch_size`` at a time); complete shards are kept."""
    if shard_size < 1 or batch_size < 1:
        raise InvalidArgumentError("shard_size and batch_size must be >= 1")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings_file = folder / "settings.json"
    if settings_file.is_file():
        if json.loads(settings_file.read_text()) != settings.as_json():
            raise InvalidArgumentError(
                f"{folder} holds data built with {settings_file.read_text().strip()}; "
                f"delete it (or use another folder) to build with {settings.as_json()}"
            )
    else:
        settings_file.write_text(json.dumps(settings.as_json()) + "\n")
    for partial in folder.glob("shard-*.partial"):
        shutil.rmtree(partial)  # an interrupted build's leftovers
    n_shards = -(-len(prompts) // shard_size)  # shards past these (a longer prompt list) stay, unread
    for s in range(n_shards):
        chunk = list(prompts[s * shard_size : (s + 1) * shard_size])
        path = folder / f"shard-{s:05d}"
        if path.is_dir():
            index = path / "index.json"
            if index.is_file() and json.loads(index.read_text()).get("prompts") == _fingerprint(chunk):
                continue
            shutil.rmtree(path)  # its prompts changed
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + s)
        _build_shard(target, tokenizer, chunk, path, settings, batch_size, pad_id, eos_ids, generator, progress)
    return ShardedData([cast(Shard, Shard.open(folder / f"shard-{s:05d}")) for s in range(n_shards)])


def build_views(
    target: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str | list[int]],
    work: str | Path,
    settings: DataSettings,
    *,
    sampled_views: int = 0,
    temperature: float = 0.7,
    **kwargs: Any,
) -> ShardedData:
    """Greedy answers in ``work/data``, and ``sampled_views`` sampled ones in ``work/data-sampled-N`` (seed N)."""
    data = build_shards(target, tokenizer, prompts, Path(work) / "data", settings, **kwargs)
    shards = list(data.shards)
    for view in range(1, sampled_views + 1):
        sampled = replace(settings, temperature=temperature, seed=view)
        folder = Path(work) / f"data-sampled-{view}"
        shards += build_shards(target, tokenizer, prompts, folder, sampled, **kwargs).shards
    return ShardedData(shards)


def _build_shard(target, tokenizer, prompts, path: Path, settings: DataSettings, batch_size: int, pad_id: int,
                 eos_ids: tuple[int, ...], generator: torch.Generator,
                 progress: Callable[[int], None] | None) -> None:  # fmt: skip
    encoded = [encode_prompt(tokenizer, p, settings.chat)[0] for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: int(encoded[i].numel()))  # similar lengths pad less
    partial = path.with_name(path.name + ".partial")
    partial.mkdir()
    vocab = int(cast(torch.Tensor, target.get_input_embeddings().weight).shape[0])
    counts = np.zeros(vocab, dtype=np.int64)
    offsets, lengths, prompt_lengths, offset, hidden, topk = [], [], [], 0, 0, settings.topk
    names = ("tokens.bin", "features.bin", "top_ids.bin", "top_logprobs.bin")
    files = [open(partial / name, "wb") for name in names]
    try:
        for b in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[b : b + batch_size]]
            answers = answer_batch(target, batch, layers=settings.layers, max_new_tokens=settings.max_new_tokens,
                                   pad_id=pad_id, eos_ids=eos_ids, topk=settings.topk,
                                   temperature=settings.temperature, generator=generator)  # fmt: skip
            for answer in answers:
                arrays = (answer.tokens.to(torch.int32), answer.features.to(torch.float16),
                          answer.top_ids.to(torch.int32), answer.top_logprobs.to(torch.float16))  # fmt: skip
                for file, array in zip(files, arrays, strict=True):
                    file.write(array.numpy().tobytes())
                length = int(answer.tokens.numel())
                counts += np.bincount(answer.tokens.numpy(), minlength=vocab)[:vocab]
                offsets.append(offset)
                lengths.append(length)
                prompt_lengths.append(answer.prompt_length)
                offset, hidden, topk = offset + length, int(answer.features.shape[-1]), int(answer.top_ids.shape[1])
                if progress is not None:
                    progress(length - answer.prompt_length)
    finally:
        for file in files:
            file.close()
    np.save(partial / "counts.npy", counts)
    meta = dict(offsets=offsets, lengths=lengths, prompt_lengths=prompt_lengths, num_layers=len(settings.layers),
                hidden_size=hidden, topk=topk, prompts=_fingerprint(prompts))  # fmt: skip
    (partial / "index.json").write_text(json.dumps(meta))
    partial.rename(path)
