"""``specdec bench``: the command-line entry of the benchmark instrument.

The CLI (``specdec/cli.py``) loads this package lazily and wires it in two calls::

    add_bench_arguments(bench_subparser)
    run_bench(args)

Drafters come in as factories; by default the ones of :mod:`specdec.drafts`
(the instrument sits above the three packages and may import each).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from specdec.drafts import ModelDrafter, NGramDrafter, OracleDrafter

from . import report
from .controlled import run_controlled
from .models import build_cost_draft
from .real import run_real
from .workloads import CONTROLLED_PROMPT, PROMPTS, chat_ids

__all__ = ["DEFAULTS", "add_bench_arguments", "cpu_model", "environment", "progress_bar", "run_bench"]

DEFAULTS: dict[str, Any] = {
    "workload": "controlled",
    "target": None,
    "draft": None,
    "dtype": None,
    "device": "cpu",
    "alphas": "0.5,0.7,0.8,0.9",
    "ks": "2,4,6,8",
    "max_new_tokens": 64,
    "rounds": 3,
    "warmup": 1,
    "quick": False,
    "seed": 0,
    "draft_hidden": 128,
    "draft_layers": 2,
    "draft_intermediate": 256,
    "no_hf": False,
    "no_auto": False,
    "prompt_lookup_tokens": 10,
    "ngram_k": None,
    "out_dir": "bench-results",
    "threads": None,
    "time_budget_s": 600.0,
    "progress": True,
}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``specdec bench`` options to ``parser`` (a subparser)."""
    d = DEFAULTS
    parser.add_argument(
        "--workload",
        choices=["controlled", "real", "all"],
        default=d["workload"],
        help="controlled: oracle drafter with fixed alpha and a real draft cost; real: prompt set with n-gram lookup",
    )
    parser.add_argument("--target", default=d["target"], help="target model id/path (default: SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--draft",
        default=d["draft"],
        help="real workload: also benchmark this draft model (id/path) against HF assisted",
    )
    parser.add_argument(
        "--dtype",
        default=d["dtype"],
        help="dtype(s), comma-separated (default: float32 for controlled; float32,bfloat16 for real)",
    )
    parser.add_argument("--device", default=d["device"], help="cpu, cuda or cuda:N")
    parser.add_argument("--alphas", default=d["alphas"], help="controlled: acceptance rates, comma-separated")
    parser.add_argument("--ks", default=d["ks"], help="controlled: draft lengths, comma-separated")
    parser.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"])
    parser.add_argument("--rounds", type=int, default=d["rounds"], help="timed interleaved rounds (medians over them)")
    parser.add_argument("--warmup", type=int, default=d["warmup"], help="untimed warm-up rounds")
    parser.add_argument(
        "--quick", action="store_true", help="a fast smoke run: fewer tokens, prompts, alphas and rounds"
    )
    parser.add_argument("--seed", type=int, default=d["seed"])
    parser.add_argument(
        "--draft-hidden",
        type=int,
        default=d["draft_hidden"],
        help="controlled: hidden size of the random cost draft model",
    )
    parser.add_argument("--draft-layers", type=int, default=d["draft_layers"])
    parser.add_argument("--draft-intermediate", type=int, default=d["draft_intermediate"])
    parser.add_argument("--no-hf", action="store_true", help="controlled: skip HF assisted generation")
    parser.add_argument("--no-auto", action="store_true", help="controlled: skip num_draft_tokens='auto'")
    parser.add_argument(
        "--prompt-lookup-tokens", type=int, default=d["prompt_lookup_tokens"], help="real: HF prompt_lookup_num_tokens"
    )
    parser.add_argument(
        "--ngram-k", type=int, default=d["ngram_k"], help="real: our NGramDrafter's num_draft_tokens (default: its own)"
    )
    parser.add_argument("--out-dir", default=d["out_dir"], help="where the JSON files and the PNG plot go")
    parser.add_argument("--threads", type=int, default=d["threads"], help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--time-budget-s", type=float, default=d["time_budget_s"], help="stop starting new runs after this long"
    )


def _options(options: Any) -> dict[str, Any]:
    values = dict(DEFAULTS)
    if isinstance(options, argparse.Namespace):
        options = vars(options)
    values.update({k: v for k, v in dict(options or {}).items() if k in DEFAULTS})
    if values["quick"]:
        values.update(
            max_new_tokens=min(values["max_new_tokens"], 24),
            rounds=1,
            warmup=1,
            alphas="0.5,0.9" if values["alphas"] == DEFAULTS["alphas"] else values["alphas"],
            ks="2,4" if values["ks"] == DEFAULTS["ks"] else values["ks"],
        )
    return values


def progress_bar(enabled: bool, label: str) -> Callable[[int], Callable[[str], None]] | None:
    """A ``progress`` argument for the workloads: given the number of runs, a tick per run (tqdm on stderr)."""
    if not enabled:
        return None

    def make(total: int) -> Callable[[str], None]:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover
            return lambda name: None
        bar = tqdm(total=total, desc=label, file=sys.stderr, leave=False)

        def tick(name: str) -> None:
            bar.set_postfix_str(name, refresh=False)
            bar.update(1)
            if bar.n >= total:
                bar.close()

        return tick

    return make


def _load(name: str | None, dtype: str, device: str):
    from specdec.models import load_model

    return load_model(name, dtype=dtype, device=device, quiet=True)


def run_bench(
    options: Any,
    drafter_factories: Mapping[str, Callable[..., Any]] | None = None,
    *,
    print_fn: Callable[[str], None] = print,
) -> dict:
    """Run the benchmark(s) that ``options`` ask for; print tables; write JSON and the plot.

    ``options``: the parsed ``specdec bench`` arguments (an ``argparse.Namespace``
    or a dict; missing keys take :data:`DEFAULTS`). ``drafter_factories``: at
    least ``"oracle"`` (``specdec.drafts.OracleDrafter``) for the controlled workload and
    ``"ngram"`` (``specdec.drafts.NGramDrafter``) for the real one; ``"model"``
    (``specdec.drafts.ModelDrafter``) when ``--draft`` names a model. Default:
    those three.

    Returns ``{"controlled": {...}, "real": [{...} per dtype]}`` (the JSON written).
    """
    if drafter_factories is None:
        drafter_factories = {"ngram": NGramDrafter, "model": ModelDrafter, "oracle": OracleDrafter}
    o = _options(options)
    if o["threads"]:
        torch.set_num_threads(o["threads"])
    deadline = time.perf_counter() + float(o["time_budget_s"])
    out_dir = Path(o["out_dir"])
    alphas = [float(a) for a in str(o["alphas"]).split(",") if a]
    ks = [int(k) for k in str(o["ks"]).split(",") if k]
    env = environment(o["device"])
    results: dict[str, Any] = {"environment": env}

    if o["workload"] in ("controlled", "all"):
        dtype = (o["dtype"] or "float32").split(",")[0]
        target, tokenizer = _load(o["target"], dtype, o["device"])
        draft = build_cost_draft(
            target,
            hidden=o["draft_hidden"],
            layers=o["draft_layers"],
            intermediate=o["draft_intermediate"],
            seed=o["seed"],
        )
        prompt = chat_ids(tokenizer, CONTROLLED_PROMPT)
        result = run_controlled(
            target=target,
            draft=draft,
            prompt_ids=prompt,
            oracle_factory=drafter_factories["oracle"],
            alphas=alphas,
            ks=ks,
            max_new_tokens=o["max_new_tokens"],
            rounds=o["rounds"],
            warmup=o["warmup"],
            include_hf=not o["no_hf"],
            include_auto=not o["no_auto"],
            seed=o["seed"],
            deadline=deadline,
            progress=progress_bar(o["progress"], "controlled"),
        )
        result.update(
            target=o["target"] or "SmolLM2-135M-Instruct",
            draft=_describe(draft),
            dtype=dtype,
            device=o["device"],
            threads=torch.get_num_threads(),
            environment=env,
        )
        print_fn(report.controlled_table(result))
        results["controlled"] = result
        report.write_json(result, out_dir / "bench_controlled.json")
        report.plot_controlled(result, out_dir / "bench_controlled.png")
        del target, draft

    if o["workload"] in ("real", "all"):
        dtypes = (o["dtype"] or "float32,bfloat16").split(",")
        prompts = list(PROMPTS[:2]) + [PROMPTS[4]] if o["quick"] else list(PROMPTS)
        results["real"] = []
        for dtype in dtypes:
            if time.perf_counter() > deadline:
                print_fn(f"time budget spent: skipping the real workload in {dtype}")
                break
            target, tokenizer = _load(o["target"], dtype, o["device"])
            draft_model = _load(o["draft"], dtype, o["device"])[0] if o["draft"] else None
            ngram = drafter_factories["ngram"]
            drafters: dict[str, Callable[[], Any]] = {"ngram": ngram}
            ks_for: dict[str, Any] = {"ngram": o["ngram_k"]}
            if draft_model is not None and "model" in drafter_factories:
                drafters["model"] = functools.partial(
                    drafter_factories["model"], draft_model, num_draft_tokens=ks[0] if len(ks) == 1 else 4
                )
            result = run_real(
                target=target,
                tokenizer=tokenizer,
                prompts=prompts,
                drafters=drafters,
                draft_model=draft_model,
                hf_prompt_lookup_tokens=o["prompt_lookup_tokens"],
                max_new_tokens=o["max_new_tokens"],
                rounds=o["rounds"],
                warmup=o["warmup"],
                num_draft_tokens=ks_for,
                seed=o["seed"],
                deadline=deadline,
                progress=progress_bar(o["progress"], f"real {dtype}"),
            )
            result.update(
                target=o["target"] or "SmolLM2-135M-Instruct", threads=torch.get_num_threads(), environment=env
            )
            print_fn(report.real_table(result))
            results["real"].append(result)
        report.write_json(results["real"], out_dir / "bench_real.json")
    return results


def _describe(model: PreTrainedModel) -> str:
    n = sum(p.numel() for p in model.parameters())
    cfg = model.config
    return f"random Llama {n / 1e6:.1f}M (hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers)"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str) -> dict[str, Any]:
    """The machine beside every number: versions, threads, CPU model and the CPU kernels torch picked."""
    import platform

    import transformers

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
