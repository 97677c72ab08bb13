"""Prompt lookup on SmolLM2-135M-Instruct: ours (NGramDrafter) vs HF prompt lookup vs the target alone.

A measurement, not a test. One process, the same dtype for every system,
interleaved rounds, medians; float32 then bfloat16. Prompts: input-grounded
(edit an email, summarise a passage, answer from a document, rename variables
in code) and open-ended (a story, an explanation), each with the chat template.

    python benchmarks/bench_ngram.py                # ~8 min on 2 CPU cores
    python benchmarks/bench_ngram.py --quick        # ~1 min smoke run

Writes docs/bench_ngram.json and docs/bench_ngram.md (the tables).
Targets (issue 2): on the input-grounded prompts, ours >= 1.3x HF prompt
lookup and >= 2x the target alone, with the same tokens in float32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from specdec.bench import PROMPTS, environment, progress_bar, real_table, run_real, write_json
from specdec.drafts import NGramDrafter
from specdec.models import load_model

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=None, help="target model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine it is steadier than 2)",
    )
    parser.add_argument(
        "--prompt-lookup-tokens", type=int, default=10, help="HF prompt_lookup_num_tokens (HF's documented value)"
    )
    parser.add_argument("--no-auto", action="store_true", help="skip ours with num_draft_tokens='auto'")
    parser.add_argument("--quick", action="store_true", help="3 prompts, 24 tokens, 1 round, float32 only")
    parser.add_argument("--out-dir", default=str(ROOT / "docs"))
    parser.add_argument("--time-budget-s", type=float, default=570.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.max_new_tokens, args.rounds, args.dtypes = 24, 1, "float32"
    torch.set_num_threads(args.threads)
    deadline = time.perf_counter() + args.time_budget_s
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[4]] if args.quick else list(PROMPTS)
    drafters = {"ngram": NGramDrafter}
    ks: dict[str, object] = {"ngram": None}
    if not args.no_auto:
        drafters["ngram-auto"] = NGramDrafter
        ks["ngram-auto"] = "auto"
    env = environment("cpu")
    results, texts = [], []
    for dtype in args.dtypes.split(","):
        if time.perf_counter() > deadline:
            print(f"time budget spent: skipping {dtype}")
            break
        target, tokenizer = load_model(args.target, dtype=dtype, device="cpu", quiet=True)
        result = run_real(
            target=target,
            tokenizer=tokenizer,
            prompts=prompts,
            drafters=drafters,
            num_draft_tokens=ks,
            hf_prompt_lookup_tokens=args.prompt_lookup_tokens,
            max_new_tokens=args.max_new_tokens,
            rounds=args.rounds,
            warmup=args.warmup,
            deadline=deadline,
            progress=progress_bar(True, f"bench_ngram {dtype}"),
        )
        result.update(target=args.target or "SmolLM2-135M-Instruct", threads=args.threads, environment=env)
        text = real_table(result)
        print(text, flush=True)
        results.append(result)
        texts.append(text)
        del target
    if not args.quick:
        out = Path(args.out_dir)
        # Keep the other dtypes' results of an earlier run (one dtype at a time fits a short budget).
        path = out / "bench_ngram.json"
        previous = json.loads(path.read_text()) if path.exists() else []
        done = {r["dtype"] for r in results}
        merged = [r for r in previous if r.get("dtype") not in done] + results
        merged.sort(key=lambda r: r["dtype"] != "float32")
        write_json(merged, path)
        (out / "bench_ngram.md").write_text("```\n" + "\n\n".join(real_table(r) for r in merged) + "\n```\n")
        print(f"wrote {out / 'bench_ngram.json'} and {out / 'bench_ngram.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
