"""What an EAGLE head for the default model may cost: one draft step vs one target step, per head shape.

A measurement, not a test. Loads the default model (SmolLM2-135M-Instruct, float32), then in one
process, interleaved, medians over rounds, after a ``--context``-token prefix:

- the target: one decode step (1 token) and verify passes over k + 1 = 3, 5, 9 tokens (its cost
  curve ``v(k)``), through the project's cache adapter;
- random EAGLE-3 heads of the target's width over a grid of draft vocabularies and MLP widths: one
  chain step (the head over its previous output and one token, with its KV cache) followed by the
  greedy argmax, i.e. what :class:`EagleDrafter` runs per drafted token.

The ratio ``c = head step / target step`` is the draft cost per token in units of one target step
(:mod:`specdec.adaptive`); the weights' values do not change the time, so random heads suffice.

    python benchmarks/measure_head_shape.py                 # ~2 min on one shared core
    python benchmarks/measure_head_shape.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdec import CausalLMAdapter, load_model  # noqa: E402
from specdec.drafts.eagle import EagleHead, EagleHeadConfig, HeadKV  # noqa: E402
from specdec.drafts.eagle.train import default_train_layers  # noqa: E402


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_avg_at_start": os.getloadavg()}  # fmt: skip


def head_for(model, draft_vocab: int, intermediate: int) -> EagleHead:
    config = model.config
    layers = config.num_hidden_layers
    head = EagleHead(
        EagleHeadConfig(
            kind="eagle3", hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads, head_dim=config.hidden_size // config.num_attention_heads,
            intermediate_size=intermediate, vocab_size=config.vocab_size, draft_vocab_size=draft_vocab,
            target_hidden_size=config.hidden_size, target_layers=default_train_layers(layers),
        )
    )  # fmt: skip
    return head.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--vocabs", default="49152,32768,16384,8192,4096")
    parser.add_argument("--intermediates", default="1536,768")
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, _ = load_model(None, dtype="float32", device="cpu", with_tokenizer=False, quiet=True)
    vocab = model.config.vocab_size
    adapter = CausalLMAdapter(model)
    prefix = torch.randint(0, vocab, (args.context,))
    with torch.inference_mode():
        adapter.forward(prefix, last_only=True)

    def target_pass(n: int):
        tokens = torch.randint(0, vocab, (n,))

        def run() -> None:
            adapter.forward(tokens)
            adapter.truncate(args.context)

        return run

    systems: dict[str, object] = {f"target x{n}": target_pass(n) for n in (1, 3, 5, 9)}
    shapes = [(int(v), int(i)) for v in args.vocabs.split(",") for i in args.intermediates.split(",")]
    for draft_vocab, intermediate in shapes:
        head = head_for(model, min(draft_vocab, vocab), intermediate)
        cache = HeadKV.empty(head.config, device="cpu", dtype=torch.float32, capacity=args.context + 16)
        with torch.inference_mode():
            feats = torch.randn(args.context, len(head.config.target_layers), head.config.target_hidden_size)
            hidden, _ = head.step(head.project(feats), prefix, torch.arange(args.context), cache)

        def run(head=head, cache=cache, hidden=hidden[-1:]) -> None:
            _, logits = head.step(hidden, prefix[:1], torch.tensor([args.context]), cache)
            int(head.target_ids[logits.argmax(-1)])
            cache.truncate(args.context)

        systems[f"head vocab {draft_vocab} mlp {intermediate}"] = run
    times: dict[str, list[float]] = {name: [] for name in systems}
    with torch.inference_mode():
        for _ in range(3):  # warm-up
            for fn in systems.values():
                fn()  # type: ignore[operator]
        for _ in range(args.rounds):
            for name, fn in systems.items():
                start = time.perf_counter()
                fn()  # type: ignore[operator]
                times[name].append(time.perf_counter() - start)
    step = statistics.median(times["target x1"])
    rows = {}
    for name, samples in times.items():
        median = statistics.median(samples)
        rows[name] = {"ms": round(1000 * median, 2), "vs_target_step": round(median / step, 3)}
        print(f"{name:32s} {1000 * median:8.2f} ms   {median / step:6.3f} x target step")
    params = sum(p.numel() for p in model.parameters())
    result = {"machine": machine(), "target_params": params, "context": args.context, "rounds": args.rounds,
              "results": rows}  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["machine"]))


if __name__ == "__main__":
    main()
