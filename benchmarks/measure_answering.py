"""CPU cost per answer token of building a head's training data for the default model, old path vs batched.

- ``one at a time``: what ``build_data`` did before (``target.generate`` per prompt, then one
  forward over prompt + answer for the hidden states);
- ``batched B``: :func:`specdec.drafts.eagle.answers.answer_batch` (left-padded, hidden states and
  top-k from the generation passes themselves);
- ``feature prefill B``: the alternative to fusing, one padded forward over B prompts + answers
  for their hidden states, to set against the fused path's extra cost.

CPU seconds (``time.process_time``, this process only) per answer token; run with one thread.
Writes ``docs/answering_cost.json``.

    OMP_NUM_THREADS=1 flock /tmp/specdec-bench.lock python benchmarks/measure_answering.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from default_head_prompts import grid_prompts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batches", default="16,32,64")
    parser.add_argument("--single", type=int, default=2, help="prompts answered one at a time")
    parser.add_argument("--out", default=str(ROOT / "docs" / "answering_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from specdec import load_model
    from specdec.drafts.eagle.answers import answer_batch
    from specdec.drafts.eagle.data import capture_layers, encode_prompt

    target, tokenizer = load_model(None, dtype="float32", device="cpu", quiet=True)
    layers = (2, 15, 27, 30)
    prompts = [encode_prompt(tokenizer, p)[0] for p in grid_prompts()[:64]]
    eos = tokenizer.eos_token_id
    results: dict[str, dict] = {}

    cpu, answer_tokens = time.process_time(), 0
    for ids in prompts[: args.single]:
        with torch.inference_mode():
            seq = target.generate(ids[None], attention_mask=torch.ones_like(ids[None]), do_sample=False,
                                  max_new_tokens=args.max_new_tokens, pad_token_id=eos)[0]  # fmt: skip
        capture_layers(target, seq, layers)
        answer_tokens += int(seq.numel() - ids.numel())
    spent = time.process_time() - cpu
    results["one at a time"] = dict(prompts=args.single, answer_tokens=answer_tokens, cpu_s=round(spent, 2),
                                    cpu_s_per_answer_token=round(spent / answer_tokens, 4))  # fmt: skip
    print(results, flush=True)
    for size in (int(b) for b in args.batches.split(",")):
        batch = prompts[:size]
        cpu = time.process_time()
        answers = answer_batch(target, batch, layers=layers, max_new_tokens=args.max_new_tokens, pad_id=eos,
                               eos_ids=(eos,))  # fmt: skip
        spent = time.process_time() - cpu
        n = sum(a.tokens.numel() - a.prompt_length for a in answers)
        results[f"batched {size}"] = dict(prompts=size, answer_tokens=n, cpu_s=round(spent, 2),
                                          cpu_s_per_answer_token=round(spent / n, 4))  # fmt: skip
        # the alternative: one padded forward over prompt + answer, for the hidden states only
        longest = max(a.tokens.numel() for a in answers)
        ids = torch.full((size, longest), eos)
        mask = torch.zeros(size, longest, dtype=torch.long)
        for r, a in enumerate(answers):
            ids[r, longest - a.tokens.numel() :], mask[r, longest - a.tokens.numel() :] = a.tokens, 1
        cpu = time.process_time()
        with torch.inference_mode():
            target(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                   output_hidden_states=True, use_cache=False)  # fmt: skip
        spent = time.process_time() - cpu
        results[f"feature prefill {size}"] = dict(cpu_s=round(spent, 2), cpu_s_per_answer_token=round(spent / n, 4))
        print(results, flush=True)
    machine = f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, 1 thread, float32"
    Path(args.out).write_text(json.dumps({"machine": machine, "max_new_tokens": args.max_new_tokens,
                                          "results": results}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
