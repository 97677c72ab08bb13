"""Batched speculative decoding on SmolLM2-135M-Instruct: total tokens/s at 1, 4, 8 and 16 sequences.

A measurement, not a test. One process, one dtype (float32), systems
interleaved in every round, medians over rounds:

  (a) hf-padded   HF ``generate`` on a left-padded batch, the target alone, greedy
  (b) hf-cb       HF continuous batching (``generate_batch``), where it runs on this CPU
  (c) ours-batch  ``SpeculativeGenerator(target, NGramDrafter()).generate(rows)``: one engine, shared passes
  (d) ours-solo   the same generator, one sequence at a time

Prompts: the input-grounded and the open prompts of the benchmark set (with
the chat template), cycled to the number of sequences. Same-token checks:
every row of (c) against (d) (both ours, exact by construction) and against
HF alone (a one-row ``generate`` of that prompt, run once).

    python benchmarks/bench_batched.py              # ~10+ min on 2 shared cores
    python benchmarks/bench_batched.py --quick      # 1 and 4 sequences, 24 tokens, 1 round

Prints the CPU model and ``torch.backends.cpu.get_cpu_capability()`` beside
the numbers and writes docs/bench_batched.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdec import SpeculativeGenerator  # noqa: E402
from specdec.bench import PROMPTS, chat_ids, environment, machine_line  # noqa: E402
from specdec.drafts import NGramDrafter  # noqa: E402
from specdec.models import load_model  # noqa: E402


def machine() -> str:
    return machine_line(environment("cpu"))


def hf_padded(target, tokenizer, rows, new):
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new, pad_token_id=pad)
    eos = set(_eos(target))
    produced = []
    for i in range(len(rows)):
        tokens = out[i, width:].tolist()
        cut = next((j + 1 for j, t in enumerate(tokens) if t in eos), len(tokens))
        produced.append(tokens[:cut])
    return produced


def _eos(target):
    eos = target.generation_config.eos_token_id
    return eos if isinstance(eos, list) else [eos] if eos is not None else []


def hf_cb(target, rows, new):
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=_eos(target) or None)
    results = target.generate_batch(rows, generation_config=config, progress_bar=False)
    return [list(r.generated_tokens) for r in results.values()]


def ours_batch(gen, rows, new):
    out = gen.generate([list(r) for r in rows], max_new_tokens=new)
    if len(rows) == 1:
        return [out.sequences[0, len(rows[0]) :].tolist()]
    width = max(len(r) for r in rows)
    return [out.sequences[i, width : width + s.new_tokens].tolist() for i, s in enumerate(out.row_stats)]


def ours_solo(gen, rows, new):
    return [gen.generate(list(r), max_new_tokens=new).sequences[0, len(r) :].tolist() for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=None)
    parser.add_argument("--sizes", default="1,4,8,16")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--systems", default="hf-padded,hf-cb,ours-batch,ours-solo")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_batched.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.max_new_tokens, args.rounds = "1,4", 24, 1
    torch.set_num_threads(args.threads)
    print(machine(), flush=True)
    target, tokenizer = load_model(args.target, dtype="float32", device="cpu", quiet=True)
    gen = SpeculativeGenerator(target, NGramDrafter())
    systems = {
        "hf-padded": lambda rows: hf_padded(target, tokenizer, rows, args.max_new_tokens),
        "hf-cb": lambda rows: hf_cb(target, rows, args.max_new_tokens),
        "ours-batch": lambda rows: ours_batch(gen, rows, args.max_new_tokens),
        "ours-solo": lambda rows: ours_solo(gen, rows, args.max_new_tokens),
    }
    systems = {k: v for k, v in systems.items() if k in args.systems.split(",")}
    sets = {
        "grounded": [chat_ids(tokenizer, p.text)[0].tolist() for p in PROMPTS if p.grounded],
        "open": [chat_ids(tokenizer, p.text)[0].tolist() for p in PROMPTS if not p.grounded],
    }
    reference: dict[tuple, list[int]] = {}
    results = {"machine": machine(), "max_new_tokens": args.max_new_tokens, "cells": []}
    broken: dict[str, str] = {}
    for set_name, prompts in sets.items():
        for size in [int(s) for s in args.sizes.split(",")]:
            rows = [prompts[i % len(prompts)] for i in range(size)]
            times: dict[str, list[float]] = {name: [] for name in systems}
            tokens: dict[str, list[list[int]]] = {}
            for _ in range(args.rounds):
                for name, run in systems.items():  # interleaved: every system once per round
                    if name in broken:
                        continue
                    start = time.perf_counter()
                    try:
                        produced = run(rows)
                    except Exception as exc:  # e.g. generate_batch on a CPU build
                        broken[name] = f"{type(exc).__name__}: {str(exc)[:160]}"
                        print(f"{name} does not run here: {broken[name]}", flush=True)
                        continue
                    times[name].append(time.perf_counter() - start)
                    tokens[name] = produced
            for _i, row in enumerate(rows):
                key = tuple(row)
                if key not in reference:
                    reference[key] = hf_padded(target, tokenizer, [row], args.max_new_tokens)[0]
            cell = {"set": set_name, "sequences": size, "systems": {}}
            for name in systems:
                if not times[name]:
                    cell["systems"][name] = {"error": broken.get(name)}
                    continue
                produced = tokens[name]
                total = sum(len(t) for t in produced)
                median = statistics.median(times[name])
                same = sum(p == reference[tuple(r)] for p, r in zip(produced, rows, strict=False))
                cell["systems"][name] = {
                    "tokens": total, "median_s": median, "tokens_per_s": total / median,
                    "same_as_hf_alone": f"{same}/{size}", "times_s": times[name],
                }
            measured = cell["systems"]
            hf_rates = [measured[n].get("tokens_per_s", 0.0) for n in ("hf-padded", "hf-cb") if n in measured]
            best_hf = max(hf_rates, default=0.0)
            ours = cell["systems"].get("ours-batch", {}).get("tokens_per_s")
            cell["ours_batch_over_best_hf"] = ours / best_hf if ours and best_hf else None
            results["cells"].append(cell)
            line = "  ".join(
                f"{n} {v['tokens_per_s']:.1f} tok/s ({v['same_as_hf_alone']} same)"
                if "tokens_per_s" in v
                else f"{n} n/a"
                for n, v in cell["systems"].items()
            )
            ratio = cell["ours_batch_over_best_hf"]
            tail = f"  ours-batch/best-HF {ratio:.2f}" if ratio else ""
            print(f"[{set_name} x{size}] {line}{tail}", flush=True)
    results["broken"] = broken
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
