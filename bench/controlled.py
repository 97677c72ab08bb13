"""The controlled workload: fixed acceptance rate alpha, draft cost from a real model.

For each alpha and k, ours runs ``OracleDrafter(reference, alpha, k, cost_model=draft)``
and Hugging Face runs ``generate(assistant_model=oracle_draft)`` with the same
draft network, a constant schedule and the same k. The target alone (HF
``generate``) is the baseline. Next to the measured speedups it reports the
measured alpha, the measured costs c and v(k) and the ideal speedup
E(alpha, k) / (k c + v(k)) of Leviathan et al., so efficiency = measured / ideal
shows the overhead of the loop.

Units: one *target step* is the baseline's time per token (HF ``generate``);
``c`` is one cached draft forward, ``v(k)`` one cached target forward over
k + 1 tokens, both in that unit. The ideal is therefore the speedup over the
baseline a loop with no overhead besides its forward passes would reach.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel

from specdec import SpeculativeGenerator
from specdec.adaptive import expected_tokens, ideal_speedup

from .harness import hf_greedy, interleave, median, time_forward
from .oracle_assistant import configure_assistant, configure_oracle

__all__ = ["run_controlled", "draft_length_histogram"]


_COSTS = "costs#"  # the pseudo-system that measures c and v once per round


def draft_length_histogram(stats) -> dict[int, int]:
    """How many steps drafted exactly k tokens, for each k seen (from the per-position counts)."""
    drafted = list(stats.drafted_per_position) + [0]
    histogram = {0: stats.steps - (drafted[0] if len(drafted) > 1 else 0)}
    for k in range(1, len(drafted)):
        histogram[k] = drafted[k - 1] - drafted[k]
    return {k: n for k, n in histogram.items() if n}


def _target_alone(target: PreTrainedModel, prompt: torch.Tensor, max_new_tokens: int) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        return hf_greedy(target, prompt, max_new_tokens)

    return run


def run_controlled(
    *,
    target: PreTrainedModel,
    draft: PreTrainedModel,
    prompt_ids: torch.Tensor,
    oracle_factory: Callable[..., Any],
    alphas: list[float],
    ks: list[int],
    max_new_tokens: int = 64,
    rounds: int = 3,
    warmup: int = 1,
    include_hf: bool = True,
    include_auto: bool = True,
    seed: int = 0,
    deadline: float | None = None,
    progress: Callable[[int], Callable[[str], None]] | None = None,
) -> dict:
    """Run the sweep and return a JSON-ready dict (see :mod:`specdec.bench.report`).

    ``draft`` must be an oracle model (see :func:`oracle_model_class`) sharing
    the target's vocabulary; ``oracle_factory`` is ``specdec.drafts.OracleDrafter``.
    ``prompt_ids``: LongTensor [1, L] on the target's device.
    """
    device = next(target.parameters()).device
    prompt = prompt_ids.to(device)
    configure_oracle(draft, None)
    reference = hf_greedy(target, prompt, max_new_tokens)
    reference_ids = reference[0].tolist()
    new_tokens = len(reference_ids) - prompt.shape[1]

    systems: dict[str, Callable[[], object]] = {}
    ours: dict[str, tuple[SpeculativeGenerator, int | str]] = {}
    outputs: dict[str, torch.Tensor] = {}
    hf_verifies: dict[str, int] = {}
    ours_stats: dict[str, Any] = {}
    for alpha_i, alpha in enumerate(alphas):
        # Several baseline runs per round, spread among the others, so drift cancels.
        systems[f"target#{alpha_i}"] = _target_alone(target, prompt, max_new_tokens)
        for k in ks + (["auto"] if include_auto else []):
            drafter = oracle_factory(
                torch.tensor(reference_ids),
                alpha,
                seed,
                num_draft_tokens=k if k != "auto" else max(ks) // 2 or 1,
                cost_model=draft,
            )
            gen = SpeculativeGenerator(target, drafter)
            name = f"ours a={alpha} k={k}"
            ours[name] = (gen, k)

            def run_ours(name=name, gen=gen, k=k) -> torch.Tensor:
                out = gen.generate(prompt, max_new_tokens=max_new_tokens, num_draft_tokens=k, seed=seed)
                outputs[name] = out.sequences
                ours_stats[name] = out.stats
                return out.sequences

            systems[name] = run_ours
            if include_hf and k != "auto":
                hf_name = f"hf a={alpha} k={k}"

                def run_hf(hf_name=hf_name, alpha=alpha, k=k) -> torch.Tensor:
                    configure_oracle(draft, reference_ids, alpha, seed)
                    configure_assistant(draft, k)
                    counter = [0]
                    hook = target.register_forward_pre_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
                    try:
                        seq = hf_greedy(target, prompt, max_new_tokens, assistant_model=draft)
                    finally:
                        hook.remove()
                        configure_oracle(draft, None)
                    outputs[hf_name] = seq
                    hf_verifies[hf_name] = counter[0]  # HF has no separate prefill: one target forward per round
                    return seq

                systems[hf_name] = run_hf

    # Costs: one draft token and one verify pass of k + 1 tokens, at the reference's mid-length context.
    # They are measured once per round, among the systems, so the machine's load during a round weighs on
    # the costs as on the speedups; the medians over rounds go into the ideal.
    context = torch.tensor(reference_ids[: prompt.shape[1] + new_tokens // 2], device=device)
    verify_sizes = list(range(1, max(ks) + 2))  # every k + 1 up to the longest, and a plain step
    cost_samples: dict[str, list[float]] = {}
    recording = [False]

    def measure_costs() -> None:
        if not recording[0]:
            return
        configure_oracle(draft, None)
        cost_samples.setdefault("draft", []).append(time_forward(draft, context, [1], repeats=5)[1])
        for n, seconds in time_forward(target, context, verify_sizes, repeats=3).items():
            cost_samples.setdefault(str(n), []).append(seconds)

    systems[_COSTS] = measure_costs
    total = (warmup + rounds) * len(systems)
    tick = progress(total) if progress is not None else None
    if warmup:
        interleave(systems, rounds=warmup, device=device, seed=seed + 1, progress=tick, deadline=deadline)
    recording[0] = True
    timings = interleave(systems, rounds=rounds, device=device, seed=seed, progress=tick, deadline=deadline)
    timings.seconds.pop(_COSTS, None)
    if not cost_samples:  # the deadline stopped every round before the cost measurement came up
        measure_costs()
    draft_s = median(cost_samples["draft"])
    verify_s = {n: median(cost_samples[str(n)]) for n in verify_sizes}

    baseline_runs = [t for name, ts in timings.seconds.items() if name.startswith("target#") for t in ts]
    baseline_s = median(baseline_runs)
    step_s = baseline_s / max(new_tokens, 1)
    c = draft_s / step_s
    results: list[dict] = []
    for alpha in alphas:
        for k in ks + (["auto"] if include_auto else []):
            name = f"ours a={alpha} k={k}"
            stats = ours_stats.get(name)
            seconds = timings.median(name)
            row: dict[str, Any] = {
                "alpha": alpha,
                "k": k,
                "ours_s": seconds,
                "ours_round_s": list(timings.seconds.get(name, [])),
                "ours_speedup": baseline_s / seconds if seconds == seconds else None,
                "ours_tokens_per_s": new_tokens / seconds if seconds == seconds else None,
                "ours_same_tokens": bool(torch.equal(outputs[name].cpu(), reference.cpu()))
                if name in outputs
                else None,
            }
            if stats is not None:
                measured_alpha = stats.conditional_acceptance  # accepted / tested drafts: alpha as the formula means it
                row["measured_alpha"] = measured_alpha
                row["tokens_per_verify"] = stats.mean_accepted_per_step
            if isinstance(k, int):
                v = verify_s[k + 1] / step_s
                row["c"] = c
                row["v"] = v
                ideal_alpha = row.get("measured_alpha", alpha)
                row["ideal_speedup"] = ideal_speedup(ideal_alpha, k, c, v)
                row["ideal_speedup_nominal_alpha"] = ideal_speedup(alpha, k, c, v)
                row["expected_tokens"] = expected_tokens(ideal_alpha, k)
                if row["ours_speedup"] is not None:
                    row["efficiency"] = row["ours_speedup"] / row["ideal_speedup"]
            else:
                if stats is not None:
                    row["chosen_k_steps"] = draft_length_histogram(stats)
                row["chosen_k_profile"] = {
                    "c": ours[name][0].draft_costs.c(),
                    "v": {kk: ours[name][0].draft_costs.v(kk) for kk in range(1, max(ks) + 1)},
                }
            hf_name = f"hf a={alpha} k={k}"
            if include_hf and k != "auto":
                hf_seconds = timings.median(hf_name)
                row["hf_s"] = hf_seconds
                row["hf_round_s"] = list(timings.seconds.get(hf_name, []))
                row["hf_speedup"] = baseline_s / hf_seconds if hf_seconds == hf_seconds else None
                row["hf_same_tokens"] = (
                    bool(torch.equal(outputs[hf_name].cpu(), reference.cpu())) if hf_name in outputs else None
                )
                row["hf_tokens_per_verify"] = new_tokens / hf_verifies[hf_name] if hf_verifies.get(hf_name) else None
                if row["ours_speedup"] and row["hf_speedup"]:
                    row["ours_over_hf"] = row["ours_speedup"] / row["hf_speedup"]
                if row["hf_speedup"] and row.get("ideal_speedup"):
                    # Both systems run the same forward passes, so a loop with no overhead at all could be
                    # at most 1 / hf_efficiency times as fast as HF here.
                    row["hf_efficiency"] = row["hf_speedup"] / row["ideal_speedup"]
            results.append(row)
    return {
        "workload": "controlled",
        "new_tokens": new_tokens,
        "prompt_tokens": int(prompt.shape[1]),
        "baseline_s": baseline_s,
        "baseline_tokens_per_s": new_tokens / baseline_s,
        "target_step_s": step_s,
        "draft_forward_s": draft_s,
        "verify_forward_s": {str(n): s for n, s in verify_s.items()},
        "c": c,
        "rounds": rounds,
        "cost_rounds": len(cost_samples.get("draft", [])),
        "completed_rounds": min((len(v) for v in timings.seconds.values()), default=0),
        "rows": results,
    }
