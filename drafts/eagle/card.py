"""The model card (``README.md``) and ``training.json`` that :func:`.train.train` writes next to a head."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .head import EagleHeadConfig
    from .train import TrainConfig, TrainResult

__all__ = ["write_card"]


def write_card(out_dir: Path, result: TrainResult, config: TrainConfig, head_config: EagleHeadConfig,
                target_name: str, data_name: str, n_train: int, n_eval: int) -> None:  # fmt: skip
    acc = result.acceptance
    facts = {
        "target": target_name or "unknown",
        "data": data_name or "prompts passed to train()",
        "train_prompts": n_train,
        "held_out_prompts": n_eval,
        "train_tokens_per_epoch": result.train_tokens,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}",
        "acceptance": acc,
        "train_config": asdict(config),
        "head": {"target_layers": list(head_config.target_layers), "draft_vocab_size": head_config.draft_vocab_size,
                 "hidden_size": head_config.hidden_size, "intermediate_size": head_config.intermediate_size},
    }  # fmt: skip
    (out_dir / "training.json").write_text(json.dumps(facts, indent=2, default=str) + "\n")
    lines = [
        f"# EAGLE-3 draft head for {facts['target']}",
        "",
        "Trained with `specdec train-draft` (specdec.drafts.eagle.train); speculators format "
        "(`config.json` + `model.safetensors`), loadable with `specdec.drafts.eagle.load_head`.",
        "",
        f"- Data: {facts['data']}: {n_train} prompts answered by the target ({result.train_tokens} tokens), "
        f"{n_eval} held out",
        f"- Training: {result.steps} steps, {config.epochs} epochs, unroll {config.unroll}, seed {config.seed}, "
        f"{result.seconds:.0f} s on {facts['machine']}",
        f"- Head: layers {list(head_config.target_layers)}, draft vocabulary {head_config.draft_vocab_size} "
        f"of {head_config.vocab_size}",
        f"- Held-out greedy acceptance (k={config.num_draft_tokens}): conditional "
        f"{acc.get('conditional_acceptance', float('nan')):.3f}, "
        f"per drafted token {acc.get('acceptance_rate', float('nan')):.3f}, "
        f"{acc.get('mean_accepted_per_step', float('nan')):.2f} tokens per target step",
        "",
    ]
    (out_dir / "README.md").write_text("\n".join(lines))
