"""``specdec train-draft``: train an EAGLE-3 draft head for a target (:mod:`specdec.drafts.eagle.train`).

Its arguments are checked (and the prompts file read) before the target loads.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import cli_checks as checks
from .cli_checks import DEFAULT_MODEL_NAME, number
from .errors import InvalidArgumentError

__all__ = ["add_train_draft_arguments", "cmd_train_draft"]


def add_train_draft_arguments(sub: Any) -> None:
    positive_int, positive_float = number(int, 1), number(float, 0, low_open=True)
    train = sub.add_parser("train-draft", help="train an EAGLE-3 draft head for a target (speculators format)")
    train.add_argument("--prompts", required=True, help="text file, one prompt per line (or .jsonl with 'prompt')")
    train.add_argument("--out", required=True, help="folder for the head, its model card and training.json")
    train.add_argument("--target", default=None, help=f"HF id, folder or .gguf file (default: {DEFAULT_MODEL_NAME})")
    train.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    train.add_argument("--dtype", default=None, help="the target's dtype while it answers (default: the checkpoint's)")
    train.add_argument("--work-dir", default=None, help="data and checkpoints (default: OUT/train-work); resumable")
    train.add_argument("--layers", default=None, help="target layer ids, e.g. 2,15,27 (default: low, middle, high)")
    train.add_argument("--draft-vocab-size", type=positive_int, default=None, help="default: min(vocab, 32768)")
    train.add_argument("--intermediate-size", type=positive_int, default=None, help="default: the target's")
    train.add_argument("--max-new-tokens", type=positive_int, default=64, help="length of the target's answers")
    train.add_argument("--held-out", type=number(int, 0), default=4, help="prompts kept for measuring acceptance")
    train.add_argument("--epochs", type=positive_int, default=2)
    train.add_argument("--batch-size", type=positive_int, default=4)
    train.add_argument("--lr", type=positive_float, default=2e-3)
    train.add_argument("--unroll", type=positive_int, default=2, help="draft steps trained per position")
    train.add_argument("--num-draft-tokens", type=positive_int, default=4, help="k for the evaluation")
    train.add_argument("--checkpoint-every", type=positive_int, default=50)
    train.add_argument("--seed", type=number(int, 0), default=0)
    train.add_argument("--save-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    train.add_argument("--answer-batch-size", type=positive_int, default=16,
                       help="prompts the target answers at once while building the data")  # fmt: skip
    train.add_argument("--shard-size", type=positive_int, default=64,
                       help="prompts per data shard (a stopped data build resumes from complete shards)")  # fmt: skip
    train.add_argument("--sampled-views", type=number(int, 0), default=0,
                       help="extra answers per prompt, sampled (more data from the same prompts)")  # fmt: skip
    train.add_argument("--sample-temperature", type=positive_float, default=0.7)
    chat = train.add_mutually_exclusive_group()
    chat.add_argument("--chat", dest="chat", action="store_true", default=None, help="apply the chat template")
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="feed the prompts as raw text")


def cmd_train_draft(args: argparse.Namespace) -> int:
    import json

    from specdec.drafts.eagle.data import read_prompts
    from specdec.drafts.eagle.train import TrainConfig, train

    from .models import load_model, resolve_device

    prompts = read_prompts(args.prompts)  # an empty or missing file fails before the model loads
    try:
        layers = tuple(int(x) for x in args.layers.split(",")) if args.layers else None
    except ValueError:
        raise InvalidArgumentError(f"--layers must be comma-separated integers, got {args.layers!r}") from None
    checks.check_model_reference(args.target, "--target")
    config = TrainConfig(
        target_layers=layers, draft_vocab_size=args.draft_vocab_size, intermediate_size=args.intermediate_size,
        max_new_tokens=args.max_new_tokens, held_out=args.held_out, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.lr, unroll=args.unroll, seed=args.seed, checkpoint_every=args.checkpoint_every,
        num_draft_tokens=args.num_draft_tokens, chat=args.chat, save_dtype=args.save_dtype,
        answer_batch_size=args.answer_batch_size, shard_size=args.shard_size, sampled_views=args.sampled_views,
        sample_temperature=args.sample_temperature,
    )  # fmt: skip
    if len(prompts) <= config.held_out:
        raise InvalidArgumentError(
            f"{args.prompts} has {len(prompts)} prompts; more than --held-out {config.held_out} are needed"
        )
    model, tokenizer = load_model(args.target, dtype=args.dtype, device=str(resolve_device(args.device)))
    result = train(model, tokenizer, prompts, args.out, config, work_dir=args.work_dir,
                   target_name=args.target or DEFAULT_MODEL_NAME, data_name=args.prompts)  # fmt: skip
    print(json.dumps({"path": str(result.path), "steps": result.steps, "train_tokens": result.train_tokens,
                      "seconds": round(result.seconds, 1), **result.acceptance}))  # fmt: skip
    return 0
