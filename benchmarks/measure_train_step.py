"""Training speed of the default model's head: tokens per CPU second of one training step, by soft-target source.

``full``: the target's distribution recomputed from the stored final hidden state (its 49152 x 576
LM head and a full softmax per token, what ``train-draft`` did before); ``topk``: scattered from
the stored top-32 log-probabilities. The rest of the step (head forward and backward, unroll 2,
draft vocabulary 8192, an AdamW update per 4 sequences) is the same. Interleaved rounds over the
same sequences; one thread. Reads a data folder built by benchmarks/train_default_head.py.

    OMP_NUM_THREADS=1 flock /tmp/specdec-bench.lock python benchmarks/measure_train_step.py DATA_FOLDER
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a data folder (shard-NNNNN/ inside)")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "train_step_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from specdec import load_model
    from specdec.drafts.eagle.head import EagleHead
    from specdec.drafts.eagle.shards import ShardedData
    from specdec.drafts.eagle.train import TrainConfig, _head_config, _sequence_loss, _target_probs
    from specdec.drafts.eagle.vocab import draft_vocab_from_counts

    target, _ = load_model(None, dtype="float32", device="cpu", quiet=True)
    data = ShardedData.open(args.data)
    config = TrainConfig(target_layers=(2, 15, 27), draft_vocab_size=8192)
    head_config = _head_config(target, config, (2, 15, 27))
    head = EagleHead(head_config)
    with torch.no_grad():
        head.d2t.copy_(draft_vocab_from_counts(data.token_counts, 8192, always=[2]))
        head.embed_tokens.weight.copy_(target.get_input_embeddings().weight.detach())
    head.embed_tokens.requires_grad_(False)
    lm = target.get_output_embeddings().weight.detach().float()
    draft_of = torch.full((head_config.vocab_size,), -1, dtype=torch.long)
    draft_of[head.target_ids] = torch.arange(8192)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    items = list(data.iterate(list(range(min(args.sequences, len(data))))))
    tokens = sum(int(item["tokens"].numel()) for item in items)
    spent = {"full": 0.0, "topk": 0.0, "topk targets only": 0.0, "full targets only": 0.0}
    for _ in range(args.rounds):
        for mode in ("full", "topk"):
            start = time.process_time()
            for b in range(0, len(items), 4):
                optimizer.zero_grad()
                for item in items[b : b + 4]:
                    probs = _target_probs(item, draft_of, 8192, lm, None, head.target_ids, mode)
                    loss, *_ = _sequence_loss(head, item["tokens"], item["features"], probs, config)
                    loss.backward()
                optimizer.step()
            spent[mode] += time.process_time() - start
            start = time.process_time()
            for item in items:
                _target_probs(item, draft_of, 8192, lm, None, head.target_ids, mode)
            spent[f"{mode} targets only"] += time.process_time() - start
    rates = {mode: round(tokens * args.rounds / s, 1) for mode, s in spent.items()}
    # what the top-k keeps of the target's distribution over the draft vocabulary
    full = torch.cat([_target_probs(i, draft_of, 8192, lm, None, head.target_ids, "full") for i in items])
    topk = torch.cat([_target_probs(i, draft_of, 8192, lm, None, head.target_ids, "topk") for i in items])
    coverage = {"full_mass_in_draft_vocab": round(float(full.sum(-1).mean()), 4),
                "topk_mass_in_draft_vocab": round(float(topk.sum(-1).mean()), 4),
                "same_argmax": round(float((full.argmax(-1) == topk.argmax(-1)).float().mean()), 4),
                "total_variation": round(float(0.5 * (full - topk).abs().sum(-1).mean()), 4)}  # fmt: skip
    report = {"tokens_per_cpu_second": rates, "topk_vs_full": coverage, "sequences": len(items), "tokens": tokens,
              "rounds": args.rounds,
              "machine": f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, 1 thread"}  # fmt: skip
    print(json.dumps(report, indent=1))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
