"""The composite drafter on the default model: never slower than the target alone? A smoke measurement.

In one process, float32, interleaved rounds, greedy, the same tokens for every system (each output
is checked against the target's own ``generate``): the target alone, n-gram lookup alone, the
composite with lookup only (``--draft composite``) and, with ``--head``, the composite with that
head (``--draft composite:HEAD``) and the head alone. Prompts: open ones (held out from the head's
training) and input-grounded ones (the answer copies the prompt). Reports, per system and prompt,
the median over rounds of the time ratio to the target alone (> 1: faster).

    python benchmarks/bench_composite.py --rounds 2 --max-new-tokens 48 [--head HEAD_FOLDER]
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from default_head_prompts import OPEN_PROMPTS  # noqa: E402
from measure_head_shape import machine  # noqa: E402

from specdec import SpeculativeGenerator, load_model  # noqa: E402
from specdec.cli_run import encode_prompt  # noqa: E402
from specdec.drafts import CompositeDrafter, NGramDrafter  # noqa: E402
from specdec.drafts.eagle import EagleDrafter, load_head  # noqa: E402

PASSAGE = (
    "The lighthouse stood on a rock at the mouth of the harbour. Every evening the keeper climbed the ninety "
    "steps, trimmed the wick, wound the clockwork that turned the lens, and wrote the weather in a log book."
)
GROUNDED = (
    f"Repeat the following text exactly, word for word:\n\n{PASSAGE}",
    f"Rewrite the following text as a numbered list of short sentences:\n\n{PASSAGE}",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--open", type=int, default=2, help="open prompts (the first N held-out ones)")
    parser.add_argument("--head", default=None, help="a head folder for the default model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    target, tokenizer = load_model(None, dtype="float32", device="cpu", quiet=True)
    prompts = {f"open{i}": p for i, p in enumerate(OPEN_PROMPTS[: args.open])}
    prompts.update({f"grounded{i}": p for i, p in enumerate(GROUNDED)})
    encoded = {name: encode_prompt(tokenizer, text, None, None) for name, text in prompts.items()}
    systems: dict[str, SpeculativeGenerator | None] = {
        "target": None,
        "ngram": SpeculativeGenerator(target, NGramDrafter()),
        "composite": SpeculativeGenerator(target, CompositeDrafter(NGramDrafter())),
    }
    if args.head:
        head = load_head(args.head, target)
        systems["head"] = SpeculativeGenerator(target, EagleDrafter(head, num_draft_tokens=3))
        systems["composite+head"] = SpeculativeGenerator(target, CompositeDrafter(NGramDrafter(), EagleDrafter(head)))
    times: dict[tuple[str, str], list[float]] = {}
    stats: dict[tuple[str, str], dict] = {}
    references: dict[str, list[int]] = {}
    for round_ in range(args.rounds):
        for name, ids in encoded.items():
            for system, gen in systems.items():
                start = time.perf_counter()
                if gen is None:
                    with torch.inference_mode():
                        out = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                              max_new_tokens=args.max_new_tokens)[0].tolist()  # fmt: skip
                    references[name] = out
                else:
                    result = gen.generate(ids, max_new_tokens=args.max_new_tokens)
                    out = result.sequences[0].tolist()
                    stats[(system, name)] = {"drafted": result.stats.drafted, "accepted": result.stats.accepted,
                                             "steps": result.stats.steps}  # fmt: skip
                    assert out == references[name], f"{system} differs from the target on {name}"
                times.setdefault((system, name), []).append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = {}
    for (system, name), samples in times.items():
        if system == "target":
            continue
        ratios = [t / s for t, s in zip(times[("target", name)], samples, strict=True)]
        rows[f"{system} / {name}"] = {"speedup": round(statistics.median(ratios), 3), **stats[(system, name)]}
        print(f"{system:15s} {name:10s} {statistics.median(ratios):5.2f}x  {stats[(system, name)]}")
    result = {"machine": machine(), "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "rows": rows,
              "target_s": {name: statistics.median(times[("target", name)]) for name in encoded}}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
