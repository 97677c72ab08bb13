"""Terminal tables, JSON files and the speedup-vs-k plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

__all__ = [
    "auto_summary",
    "controlled_table",
    "hf_summary",
    "machine_line",
    "paired_ratio",
    "plot_controlled",
    "real_table",
    "write_json",
]


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


def machine_line(env: dict[str, Any]) -> str:
    """One line for the tables: the CPU model, the CPU kernels torch picked, threads (and the GPU, if any).

    ``env`` is :func:`specdec.bench.run.environment`'s dict.
    """
    line = f"machine: {env.get('cpu', '?')} (torch CPU capability {env.get('cpu_capability', '?')}), "
    line += f"{env.get('threads', '?')} torch threads"
    return line + (f", GPU {env['gpu']}" if "gpu" in env else "")


def _machine(result: dict) -> list[str]:
    return [machine_line(result["environment"])] if result.get("environment") else []


def controlled_table(result: dict) -> str:
    header = ["alpha", "k", "meas.a", "c", "v", "ideal", "ours", "eff", "hf", "ours/hf", "same(ours,hf)"]
    rows = []
    for r in result["rows"]:
        rows.append(
            [
                _f(r["alpha"]),
                str(r["k"]),
                _f(r.get("measured_alpha")),
                _f(r.get("c"), 3),
                _f(r.get("v")),
                _f(r.get("ideal_speedup")),
                _f(r.get("ours_speedup")),
                _f(r.get("efficiency")),
                _f(r.get("hf_speedup")),
                _f(r.get("ours_over_hf")),
                f"{_f(r.get('ours_same_tokens'))},{_f(r.get('hf_same_tokens'))}",
            ]
        )
    head = (
        f"controlled workload: {result.get('target', '?')} target, {result.get('draft', '?')} draft, "
        f"{result.get('dtype', '?')} on {result.get('device', '?')}; {result['new_tokens']} new tokens; "
        f"target alone {result['baseline_tokens_per_s']:.1f} tok/s; speedups over the target alone"
    )
    summaries = [text for text in (auto_summary(result), hf_summary(result)) if text]
    return "\n".join([head, *_machine(result), _table(header, rows), *summaries])


def paired_ratio(reference_s: list[float] | None, candidate_s: list[float] | None) -> float | None:
    """How many times faster the candidate ran: the median over rounds of ``reference_s[r] / candidate_s[r]``.

    Both systems ran within the same interleaved round, so load that changes
    from round to round cancels in each ratio; the median then drops rounds
    where it hit one of the two runs only.
    """
    if not reference_s or not candidate_s:
        return None
    ratios = [a / b for a, b in zip(reference_s, candidate_s, strict=False) if b > 0]
    return statistics.median(ratios) if ratios else None


def auto_summary(result: dict) -> str:
    """How ``auto`` compares with each fixed k and with the best fixed k, per alpha and on average.

    The best fixed k of an alpha is the one with the highest median speedup;
    ``auto/best`` is the ratio of the two medians, and ``paired`` the median of
    the per-round ratios (:func:`paired_ratio`), which round-to-round load
    disturbs less.
    """
    rows = result["rows"]
    alphas = sorted({r["alpha"] for r in rows})
    fixed_ks = sorted({r["k"] for r in rows if r["k"] != "auto"})
    if not any(r["k"] == "auto" for r in rows):
        return ""
    lines = ["auto draft length vs fixed k (speedup over the target alone):"]
    by = {(r["alpha"], r["k"]): r.get("ours_speedup") or 0.0 for r in rows}
    rounds = {(r["alpha"], r["k"]): r.get("ours_round_s") for r in rows}
    worst_ratio = worst_paired = float("inf")
    for a in alphas:
        best_k = max(fixed_ks, key=lambda k: by[(a, k)])
        ratio = by[(a, "auto")] / by[(a, best_k)] if by[(a, best_k)] else float("nan")
        paired = paired_ratio(rounds[(a, best_k)], rounds[(a, "auto")])
        worst_ratio = min(worst_ratio, ratio)
        if paired is not None:
            worst_paired = min(worst_paired, paired)
        lines.append(
            f"  alpha={a}: auto {by[(a, 'auto')]:.2f}  best fixed k={best_k} {by[(a, best_k)]:.2f}"
            f"  auto/best {ratio:.3f}" + (f"  paired by round {paired:.3f}" if paired is not None else "")
        )
    mean_auto = sum(by[(a, "auto")] for a in alphas) / len(alphas)
    mean_fixed = {k: sum(by[(a, k)] for a in alphas) / len(alphas) for k in fixed_ks}
    best_single = max(mean_fixed, key=lambda k: mean_fixed[k])
    lines.append(
        f"  mean over alpha: auto {mean_auto:.3f}  best single fixed k={best_single} {mean_fixed[best_single]:.3f}"
        f"  (auto/best single {mean_auto / mean_fixed[best_single]:.3f}); worst auto/best-k per alpha {worst_ratio:.3f}"
        + (f" (paired {worst_paired:.3f})" if worst_paired != float("inf") else "")
    )
    result["auto_summary"] = {
        "mean_auto_speedup": mean_auto,
        "best_single_fixed_k": best_single,
        "best_single_fixed_mean_speedup": mean_fixed[best_single],
        "worst_auto_over_best_fixed": worst_ratio,
        "worst_auto_over_best_fixed_paired": worst_paired if worst_paired != float("inf") else None,
    }
    return "\n".join(lines)


def hf_summary(result: dict) -> str:
    """Ours against HF assisted generation: paired by round, and the most any loop could gain over HF here."""
    rows = result["rows"]
    lines = []
    paired = [paired_ratio(r.get("hf_round_s"), r.get("ours_round_s")) for r in rows if r.get("hf_round_s")]
    hf = [x for x in paired if x is not None]
    if hf:
        lines.append(f"ours/HF assisted, paired by round: {min(hf):.3f}-{max(hf):.3f}, mean {sum(hf) / len(hf):.3f}")
        result["ours_over_hf_paired"] = {"min": min(hf), "max": max(hf), "mean": sum(hf) / len(hf)}
    ceiling = [1.0 / r["hf_efficiency"] for r in rows if r.get("hf_efficiency")]
    if ceiling:
        lines.append(
            f"HF's efficiency caps ours/HF: a loop with no overhead would be {min(ceiling):.2f}-{max(ceiling):.2f}x HF,"
            f" mean {sum(ceiling) / len(ceiling):.2f}x"
        )
        result["ours_over_hf_ceiling"] = {"min": min(ceiling), "max": max(ceiling), "mean": sum(ceiling) / len(ceiling)}
    return "\n".join(lines)


def real_table(result: dict) -> str:
    systems = result["systems"]
    header = ["prompt", "task", "tokens"] + [f"{s} tok/s" for s in systems] + [f"{s} x" for s in systems[1:]]
    header += ["ours/hf-pl", "same"]
    rows = []
    ours = [s for s in systems if s.startswith("ours-")]
    for r in result["rows"]:
        cells = [r["prompt"], r["task"], str(r["new_tokens"])]
        cells += [_f(r[s]["tokens_per_s"], 1) for s in systems]
        cells += [_f(r[s]["speedup"]) for s in systems[1:]]
        cells += [_f(r[ours[0]]["speedup"] / r["hf-prompt-lookup"]["speedup"]) if ours else "-"]
        cells += [",".join(_f(r[s]["same_tokens"]) for s in systems[1:])]
        rows.append(cells)
    lines = [
        f"real workload: {result.get('target', '?')} in {result['dtype']} on {result['device']}, "
        f"{result['max_new_tokens']} new tokens max, median of {result['rounds']} interleaved rounds; "
        "x = speedup over the target alone",
        *_machine(result),
        _table(header, rows),
    ]
    for group, per_system in result["summary"].items():
        parts = [f"{s} {v['median_speedup']:.2f}x" for s, v in per_system.items()]
        extra = [
            f"{s}/hf-prompt-lookup {v['median_over_hf_prompt_lookup']:.2f}"
            for s, v in per_system.items()
            if "median_over_hf_prompt_lookup" in v
        ]
        lines.append(f"  median over {group} prompts: " + ", ".join(parts + extra))
    return "\n".join(lines)


def write_json(result: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def plot_controlled(result: dict, path: str | Path, title: str | None = None) -> Path | None:
    """PNG: speedup against k, one colour per alpha; solid = measured (ours), dashed = ideal, dotted = HF."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dev/bench extra
        return None
    rows = [r for r in result["rows"] if r["k"] != "auto"]
    alphas = sorted({r["alpha"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, a in enumerate(alphas):
        sel = sorted((r for r in rows if r["alpha"] == a), key=lambda r: r["k"])
        ks = [r["k"] for r in sel]
        color = colors[i % len(colors)]
        ax.plot(ks, [r.get("ideal_speedup") for r in sel], "--", color=color, alpha=0.7)
        ax.plot(ks, [r.get("ours_speedup") for r in sel], "o-", color=color, label=f"alpha={a}")
        if any(r.get("hf_speedup") for r in sel):
            ax.plot(ks, [r.get("hf_speedup") for r in sel], "x:", color=color, alpha=0.8)
        auto = [r for r in result["rows"] if r["alpha"] == a and r["k"] == "auto"]
        if auto and auto[0].get("ours_speedup"):
            ax.axhline(auto[0]["ours_speedup"], color=color, lw=0.8, alpha=0.4)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xlabel("draft tokens per step (k)")
    ax.set_ylabel("speedup over the target alone")
    ax.set_title(
        title or "controlled workload: solid = ours (measured), dashed = ideal, dotted = HF assisted, thin = ours auto",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
