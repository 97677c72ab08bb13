"""Timing: interleaved rounds, medians, and micro-benchmarks of single forward passes.

Every system runs in the same process on the same models. Within a round the
systems run in a shuffled (seeded) order so that machine drift hits all of
them alike; results are medians over rounds.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedModel

from specdec import CausalLMAdapter

__all__ = [
    "Timings",
    "device_sync",
    "gemv_bandwidth",
    "hf_greedy",
    "interleave",
    "median",
    "time_forward",
    "weight_bytes",
]


def device_sync(device: torch.device | str) -> None:
    """Wait for queued kernels (CUDA only); timing boundaries need it, the decode loop does not."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_greedy(model: PreTrainedModel, input_ids: torch.Tensor, max_new_tokens: int, **extra: Any) -> torch.Tensor:
    """HF ``generate``, greedy, with an all-ones attention mask: LongTensor [1, L + new] (``extra``: more kwargs)."""
    if not isinstance(model, GenerationMixin):
        raise TypeError(f"{type(model).__name__} cannot generate: the benchmarks need a causal LM")
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            **extra,
        )
    assert isinstance(out, torch.Tensor)  # no return_dict_in_generate here
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass
class Timings:
    """Seconds per run, per system name."""

    seconds: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return median(self.seconds.get(name, []))


def interleave(
    systems: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    device: torch.device | str,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    deadline: float | None = None,
) -> Timings:
    """Run every system once per round, in a shuffled order, and time each run.

    ``deadline`` (a ``time.perf_counter()`` value): stop starting new runs past it.
    """
    rng = random.Random(seed)
    timings = Timings()
    names = list(systems)
    for _ in range(rounds):
        order = names[:]
        rng.shuffle(order)
        for name in order:
            if deadline is not None and time.perf_counter() > deadline:
                return timings
            device_sync(device)
            start = time.perf_counter()
            systems[name]()
            device_sync(device)
            timings.add(name, time.perf_counter() - start)
            if progress is not None:
                progress(name)
    return timings


@torch.inference_mode()
def time_forward(
    model: PreTrainedModel, context_ids: torch.Tensor, sizes: list[int], *, repeats: int = 5
) -> dict[int, float]:
    """Median seconds of one cached forward over ``n`` new tokens, for each ``n`` in ``sizes``.

    The cache first holds ``context_ids`` (LongTensor [L]); each measured pass
    appends ``n`` tokens and is rolled back, exactly as a verify pass (n = k + 1)
    or a draft step (n = 1) runs inside the decode loop.
    """
    adapter = CausalLMAdapter(model)
    adapter.reset()
    device = adapter.device
    context_ids = context_ids.to(device)
    adapter.forward(context_ids, last_only=True)
    base = adapter.length
    block = context_ids[-max(sizes) :].clone()
    if block.shape[0] < max(sizes):
        block = block.repeat(max(sizes) // max(block.shape[0], 1) + 1)[: max(sizes)]
    samples: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            device_sync(device)
            start = time.perf_counter()
            logits = adapter.forward(block[:n])
            logits[-1, :1].tolist()  # the loop reads a result back each step
            samples[n].append(time.perf_counter() - start)
            adapter.truncate(base)
    adapter.reset()
    return {n: median(v) for n, v in samples.items()}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the distinct parameters (a tied embedding counted once): what one forward pass reads."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


@torch.inference_mode()
def gemv_bandwidth(
    dtype: torch.dtype, device: torch.device | str = "cpu", *, megabytes: int = 256, repeats: int = 9
) -> float:
    """Bytes per second a one-row product streams from a matrix far larger than the caches (median).

    ``weight_bytes(model) / gemv_bandwidth(...)`` is the machine's time to read the model's weights once:
    the floor of a one-token step.
    """
    cols = 2048
    rows = megabytes * 2**20 // (cols * torch.tensor([], dtype=dtype).element_size())
    matrix = torch.randn(rows, cols, dtype=dtype, device=device)
    vector = torch.randn(1, cols, dtype=dtype, device=device)
    torch.nn.functional.linear(vector, matrix)
    samples = []
    for _ in range(repeats):
        device_sync(device)
        started = time.perf_counter()
        torch.nn.functional.linear(vector, matrix)
        device_sync(device)
        samples.append(time.perf_counter() - started)
    return matrix.numel() * matrix.element_size() / statistics.median(samples)
