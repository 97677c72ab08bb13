"""Train the EAGLE-3 head for the default model (SmolLM2-135M-Instruct) with ``specdec train-draft``, resumably.

The recipe (see docs/default_head.md for the reasons and the measurements behind each choice):

- prompts: the first ``--prompts`` of the topic x task grid (benchmarks/default_head_prompts.py),
  written to the stage's folder; the target answers each with its chat template, greedily;
- head: EAGLE-3 over target layers (2, 15, 27), the target's width (576) and MLP width (1536),
  a draft vocabulary of 8192 ids (the most frequent in the target's answers, EOS always in);
- loss: soft cross-entropy against the target's distribution plus 0.1 x feature smooth-L1,
  unroll 2 (the second draft step trained on the head's own output).

Everything lives in ``--cache`` (default ``~/.cache/specdec/default-head/STAGE``), outside the
repository: the prompt file, ``train-draft``'s work folder (the target's hidden states and
checkpoints) and the head. Running the same command again resumes: the data is reused once
complete, training continues from the last checkpoint. Afterwards the head is evaluated on the
held-out open prompts (greedy, EagleDrafter alone, k = ``--num-draft-tokens``), and the numbers
(tokens, CPU seconds, acceptance) go to ``STAGE/result.json``.

    python benchmarks/train_default_head.py --stage trial          # ~10-15 CPU minutes on this machine
    python benchmarks/train_default_head.py --stage a              # ~3.5 CPU hours (docs/default_head.md)
    python benchmarks/train_default_head.py --stage full           # ~11 CPU hours; resumable

Only this script's settings for a stage may change between calls by deleting the stage folder:
``train-draft`` refuses a checkpoint written with other settings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from default_head_prompts import OPEN_PROMPTS, grid_prompts  # noqa: E402

#: Per stage: prompts from the grid, answer length, epochs, held-out grid prompts, open prompts evaluated.
STAGES = {
    "trial": dict(prompts=28, max_new_tokens=48, epochs=3, held_out=4, open_prompts=6, checkpoint_every=5),
    "a": dict(prompts=240, max_new_tokens=128, epochs=4, held_out=8, open_prompts=16, checkpoint_every=25),
    "full": dict(prompts=720, max_new_tokens=128, epochs=4, held_out=16, open_prompts=16, checkpoint_every=25),
}
RECIPE = dict(layers="2,15,27", draft_vocab_size=8192, unroll=2, lr=2e-3, batch_size=4, seed=0)


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def train(stage: dict, folder: Path, num_draft_tokens: int) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(grid_prompts()[: stage["prompts"]]) + "\n")
    command = [
        sys.executable, "-m", "specdec", "train-draft", "--prompts", str(prompts), "--out", str(folder / "head"),
        "--work-dir", str(folder / "work"), "--layers", RECIPE["layers"],
        "--draft-vocab-size", str(RECIPE["draft_vocab_size"]), "--max-new-tokens", str(stage["max_new_tokens"]),
        "--held-out", str(stage["held_out"]), "--epochs", str(stage["epochs"]),
        "--batch-size", str(RECIPE["batch_size"]), "--lr", str(RECIPE["lr"]), "--unroll", str(RECIPE["unroll"]),
        "--num-draft-tokens", str(num_draft_tokens), "--checkpoint-every", str(stage["checkpoint_every"]),
        "--seed", str(RECIPE["seed"]), "--save-dtype", "float16", "--dtype", "float32",
    ]  # fmt: skip
    print("+", " ".join(command), flush=True)
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def evaluate_open(folder: Path, count: int, max_new_tokens: int, num_draft_tokens: int) -> dict:
    from specdec import load_model
    from specdec.drafts.eagle import load_head
    from specdec.drafts.eagle.data import encode_prompt
    from specdec.drafts.eagle.train import evaluate

    target, tokenizer = load_model(None, dtype="float32", device="cpu", quiet=True)
    head = load_head(folder / "head", target)
    encoded = [encode_prompt(tokenizer, p, None) for p in OPEN_PROMPTS[:count]]
    return evaluate(target, head, encoded, max_new_tokens=max_new_tokens, num_draft_tokens=num_draft_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(STAGES), default="trial")
    parser.add_argument("--cache", default=None, help="default: ~/.cache/specdec/default-head/STAGE")
    parser.add_argument("--num-draft-tokens", type=int, default=3)
    args = parser.parse_args()
    stage = STAGES[args.stage]
    folder = Path(args.cache or Path.home() / ".cache" / "specdec" / "default-head" / args.stage)
    started, cpu0 = time.perf_counter(), cpu_seconds()
    trained = train(stage, folder, args.num_draft_tokens)
    train_cpu = cpu_seconds() - cpu0
    open_acceptance = evaluate_open(folder, stage["open_prompts"], stage["max_new_tokens"], args.num_draft_tokens)
    result = {
        "stage": args.stage, "stage_settings": stage, "recipe": RECIPE, "train": trained,
        "held_out_open": open_acceptance, "cpu_seconds_train_call": round(train_cpu, 1),
        "cpu_seconds_total_call": round(cpu_seconds() - cpu0, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }  # fmt: skip
    (folder / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
