"""The real workload: a target on a fixed prompt set, with prompt lookup or a draft model.

Systems: the target alone (HF ``generate``), HF prompt lookup
(``prompt_lookup_num_tokens``), HF assisted generation when a draft model is
given, and ours with each drafter (n-gram, optionally ``auto`` draft length and
a model drafter). All greedy, same dtype and device, interleaved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel

from specdec import SpeculativeGenerator

from .harness import hf_greedy, interleave, median
from .oracle_assistant import configure_assistant
from .workloads import Prompt, chat_ids

__all__ = ["run_real"]


def run_real(
    *,
    target: PreTrainedModel,
    tokenizer: Any,
    prompts: list[Prompt],
    drafters: dict[str, Callable[[], Any]],
    draft_model: PreTrainedModel | None = None,
    draft_k: int = 4,
    hf_prompt_lookup_tokens: int = 10,
    max_new_tokens: int = 64,
    rounds: int = 3,
    warmup: int = 1,
    num_draft_tokens: dict[str, int | str | None] | None = None,
    seed: int = 0,
    deadline: float | None = None,
    progress: Callable[[int], Callable[[str], None]] | None = None,
    generators: dict[str, SpeculativeGenerator] | None = None,
) -> dict:
    """Time every system on every prompt; return a JSON-ready dict.

    ``drafters``: name -> zero-argument factory of a drafter (ours); each gets
    its own :class:`SpeculativeGenerator`, reused across prompts.
    ``num_draft_tokens``: per-drafter ``num_draft_tokens`` (default None: the drafter's default).
    ``generators``: name -> a generator built by the caller (a compiled one), used
    as it is; its name need not be in ``drafters``.
    """
    device = next(target.parameters()).device
    num_draft_tokens = num_draft_tokens or {}
    built = {name: SpeculativeGenerator(target, factory()) for name, factory in drafters.items()}
    generators = {**built, **(generators or {})}
    systems: dict[str, Callable[[], Any]] = {}
    outputs: dict[str, torch.Tensor] = {}
    stats: dict[str, Any] = {}
    inputs = {p.name: chat_ids(tokenizer, p.text).to(device) for p in prompts}

    def hf(prompt_name: str, key: str, **extra: Any) -> Callable[[], Any]:
        ids = inputs[prompt_name]

        def run() -> None:
            outputs[key] = hf_greedy(target, ids, max_new_tokens, **extra).cpu()

        return run

    def ours(key: str, gen: SpeculativeGenerator, ids: torch.Tensor, k: int | str | None) -> Callable[[], None]:
        def run() -> None:
            out = gen.generate(ids, max_new_tokens=max_new_tokens, num_draft_tokens=k, seed=seed)
            outputs[key] = out.sequences.cpu()
            stats[key] = out.stats

        return run

    for p in prompts:
        systems[f"{p.name}|target"] = hf(p.name, f"{p.name}|target")
        systems[f"{p.name}|hf-prompt-lookup"] = hf(
            p.name, f"{p.name}|hf-prompt-lookup", prompt_lookup_num_tokens=hf_prompt_lookup_tokens
        )
        if draft_model is not None:
            configure_assistant(draft_model, draft_k)
            systems[f"{p.name}|hf-assisted"] = hf(p.name, f"{p.name}|hf-assisted", assistant_model=draft_model)
        for name, gen in generators.items():
            key = f"{p.name}|ours-{name}"
            systems[key] = ours(key, gen, inputs[p.name], num_draft_tokens.get(name))

    total = (warmup + rounds) * len(systems)
    tick = progress(total) if progress is not None else None
    if warmup:
        interleave(systems, rounds=warmup, device=device, seed=seed + 1, progress=tick, deadline=deadline)
    timings = interleave(systems, rounds=rounds, device=device, seed=seed, progress=tick, deadline=deadline)

    rows = []
    system_names = ["target", "hf-prompt-lookup"] + (["hf-assisted"] if draft_model is not None else [])
    system_names += [f"ours-{name}" for name in generators]
    for p in prompts:
        reference = outputs.get(f"{p.name}|target")
        new_tokens = int(reference.shape[1] - inputs[p.name].shape[1]) if reference is not None else 0
        base = timings.median(f"{p.name}|target")
        row: dict[str, Any] = {"prompt": p.name, "task": p.task, "grounded": p.grounded, "new_tokens": new_tokens}
        for system in system_names:
            key = f"{p.name}|{system}"
            seconds = timings.median(key)
            out = outputs.get(key)
            entry: dict[str, Any] = {
                "s": seconds,
                "tokens_per_s": (int(out.shape[1]) - inputs[p.name].shape[1]) / seconds if out is not None else None,
                "speedup": base / seconds,
                "same_tokens": bool(reference is not None and out is not None and torch.equal(out, reference)),
            }
            if key in stats:
                entry["acceptance_rate"] = stats[key].acceptance_rate
                entry["tokens_per_verify"] = stats[key].mean_accepted_per_step
            row[system] = entry
        rows.append(row)

    summary: dict[str, Any] = {}
    for group, keep in (
        ("grounded", lambda r: r["grounded"]),
        ("open", lambda r: not r["grounded"]),
        ("all", lambda r: True),
    ):
        chosen = [r for r in rows if keep(r)]
        if not chosen:
            continue
        summary[group] = {
            system: {
                "median_speedup": median([r[system]["speedup"] for r in chosen]),
                "median_tokens_per_s": median([r[system]["tokens_per_s"] for r in chosen if r[system]["tokens_per_s"]]),
            }
            for system in system_names
        }
        for system in system_names:
            if system.startswith("ours-"):
                summary[group][system]["median_over_hf_prompt_lookup"] = median(
                    [r[system]["speedup"] / r["hf-prompt-lookup"]["speedup"] for r in chosen]
                )
    return {
        "workload": "real",
        "dtype": str(next(target.parameters()).dtype).replace("torch.", ""),
        "device": str(device),
        "max_new_tokens": max_new_tokens,
        "rounds": rounds,
        "systems": system_names,
        "rows": rows,
        "summary": summary,
    }
