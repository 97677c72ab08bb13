"""EAGLE head on a small random Llama target: acceptance and tokens/s against the target alone.

A measurement, not a test. In one process, float32, one thread:

1. Hook cost: a verify-sized forward (k + 1 = 5 tokens after a 64-token context) plain, with
   forward hooks on the head's three layers (what the generator installs), and with HF's
   ``output_hidden_states=True`` (every layer), interleaved, medians.
2. A head trained with ``train`` (the function ``specdec train-draft`` runs) on the target's own
   answers to random-token prompts, within a test-sized budget.
3. Held-out prompts, interleaved rounds: the target's own ``generate`` (greedy) vs
   ``SpeculativeGenerator`` with ``EagleDrafter`` at k = 2, 3, 4. Every output is checked token
   for token against ``generate``; speed is the median over rounds of the paired time ratio.

    python benchmarks/bench_eagle.py            # ~4 min on 2 shared CPU cores
    python benchmarks/bench_eagle.py --quick    # ~1 min smoke run

Writes docs/bench_eagle.json and docs/bench_eagle.md (not with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdec import CausalLMAdapter, SpeculativeGenerator  # noqa: E402
from specdec.drafts.eagle import EagleDrafter, load_head  # noqa: E402
from specdec.drafts.eagle.train import TrainConfig, default_train_layers, train  # noqa: E402


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()}  # fmt: skip


def make_target(args) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=1024, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                         tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(args.logit_scale)  # peaked next-token distributions, as trained models have
    model.generation_config.eos_token_id = None
    return model.requires_grad_(False)


def hook_cost(target, layers, repeats: int) -> dict:
    """Median time of one 5-token forward after a 59-token context: plain, with our hooks, with every layer."""
    from transformers import DynamicCache

    adapter = CausalLMAdapter(target)  # only to install and read the hooks, as the generator does
    context = torch.randint(0, target.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {"plain": [], "hooks": [], "output_hidden_states": []}
    with torch.inference_mode():
        for _ in range(repeats):
            for mode in times:
                cache = DynamicCache()
                target(input_ids=context[:, :59], cache=cache, use_cache=True)
                adapter.capture(layers if mode == "hooks" else None)
                start = time.perf_counter()
                out = target(input_ids=context[:, 59:], cache=cache, use_cache=True,
                             output_hidden_states=mode == "output_hidden_states")  # fmt: skip
                if mode == "hooks":
                    adapter.hidden_states  # noqa: B018 - the stacking is part of the cost
                elif mode == "output_hidden_states":
                    torch.stack([out.hidden_states[i][0] for i in layers], dim=1)
                times[mode].append(time.perf_counter() - start)
                adapter.capture(None)
    medians = {mode: statistics.median(t) * 1e3 for mode, t in times.items()}
    return {"median_ms": medians, "hooks_over_plain": medians["hooks"] / medians["plain"],
            "output_hidden_states_over_plain": medians["output_hidden_states"] / medians["plain"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--logit-scale", type=float, default=6.0)
    parser.add_argument("--train-prompts", type=int, default=64)
    parser.add_argument("--eval-prompts", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)
    if args.quick:
        args.train_prompts, args.epochs, args.eval_prompts, args.rounds, args.max_new_tokens = 16, 1, 2, 1, 16
    torch.set_num_threads(args.threads)
    info = machine()
    print(f"machine: {info['cpu']} | capability {info['cpu_capability']} | {info['threads']} thread(s)", flush=True)
    target = make_target(args)
    gen_ = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, args.vocab, (12,), generator=gen_).tolist() for _ in range(args.train_prompts)]
    held_out = [torch.randint(0, args.vocab, (12,), generator=gen_)[None] for _ in range(args.eval_prompts)]

    layers = default_train_layers(args.layers)
    costs = hook_cost(target, layers, repeats=5 if args.quick else 30)
    print(f"verify forward (5 tokens after 59): {costs['median_ms']} ms; hooks/plain "
          f"{costs['hooks_over_plain']:.3f}, output_hidden_states/plain {costs['output_hidden_states_over_plain']:.3f}",
          flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(target_layers=layers, held_out=0, epochs=args.epochs, max_new_tokens=args.max_new_tokens,
                             draft_vocab_size=min(args.vocab, 1024), learning_rate=5e-3, unroll=2,
                             checkpoint_every=10_000)  # fmt: skip
        started = time.perf_counter()
        result = train(target, None, prompts, Path(tmp) / "head", config, progress=False)
        train_s = time.perf_counter() - started
        head = load_head(Path(tmp) / "head", target)
    print(f"trained {result.steps} steps on {result.train_tokens} tokens in {train_s:.0f} s", flush=True)

    ks = (2, 3, 4)
    systems = ["target"] + [f"eagle k={k}" for k in ks]
    gens = {f"eagle k={k}": SpeculativeGenerator(target, EagleDrafter(head, num_draft_tokens=k)) for k in ks}
    times = {s: [[] for _ in held_out] for s in systems}
    stats = {s: {"accepted": 0, "tested": 0, "drafted": 0, "new": 0, "steps": 0} for s in systems[1:]}
    for round_ in range(args.rounds):
        for i, ids in enumerate(held_out):
            order = systems if (round_ + i) % 2 == 0 else systems[::-1]  # alternate who goes first
            outputs = {}
            for system in order:
                start = time.perf_counter()
                if system == "target":
                    with torch.inference_mode():
                        outputs[system] = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                          max_new_tokens=args.max_new_tokens)  # fmt: skip
                    times[system][i].append(time.perf_counter() - start)
                    continue
                run = gens[system].generate(ids, max_new_tokens=args.max_new_tokens)
                times[system][i].append(time.perf_counter() - start)
                outputs[system] = run.sequences
                if round_ == 0:
                    s = run.stats
                    for key, value in (("accepted", s.accepted), ("tested", s.tested), ("drafted", s.drafted),
                                       ("new", s.new_tokens), ("steps", s.steps)):  # fmt: skip
                        stats[system][key] += value
            for system in systems[1:]:
                assert outputs[system].tolist() == outputs["target"].tolist(), f"{system} differs on prompt {i}"
    rows = []
    for system in systems:
        per_prompt = [statistics.median(t) for t in times[system]]
        ratios = [statistics.median([a / b for a, b in zip(times["target"][i], times[system][i], strict=False)])
                  for i in range(len(held_out))]  # fmt: skip
        row = {"system": system, "median_s_per_prompt": statistics.median(per_prompt),
               "tokens_per_s": args.max_new_tokens / statistics.median(per_prompt),
               "speed_vs_target": statistics.median(ratios)}  # fmt: skip
        if system in stats:
            st = stats[system]
            row.update(conditional_acceptance=st["accepted"] / max(st["tested"], 1),
                       acceptance_rate=st["accepted"] / max(st["drafted"], 1),
                       tokens_per_step=st["new"] / max(st["steps"], 1))  # fmt: skip
        rows.append(row)
    lines = [f"machine: {info['cpu']}, capability {info['cpu_capability']}, {info['threads']} thread(s), "
             f"torch {info['torch']}, load {info['load_avg_at_start'][0]:.1f}",
             f"target: random Llama, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
             f"logit scale {args.logit_scale}, float32; head layers {list(layers)}, "
             f"draft vocab {head.config.draft_vocab_size}",
             f"training: {result.steps} steps, {result.train_tokens} tokens, {train_s:.0f} s",
             f"hooks: verify forward x{costs['hooks_over_plain']:.3f} with hooks on 3 layers, "
             f"x{costs['output_hidden_states_over_plain']:.3f} with output_hidden_states",
             "",
             f"{'system':<12} {'tok/s':>8} {'x target':>9} {'cond. acc.':>10} {'tok/step':>9}"]  # fmt: skip
    for row in rows:
        lines.append(f"{row['system']:<12} {row['tokens_per_s']:>8.1f} {row['speed_vs_target']:>9.2f} "
                     f"{row.get('conditional_acceptance', float('nan')):>10.3f} "
                     f"{row.get('tokens_per_step', float('nan')):>9.2f}")  # fmt: skip
    text = "\n".join(lines)
    print(text, flush=True)
    if not args.quick:
        out = Path(args.out_dir)
        payload = {"machine": info, "args": vars(args), "hook_cost": costs, "train_steps": result.steps,
                   "train_tokens": result.train_tokens, "train_seconds": train_s, "rows": rows}  # fmt: skip
        (out / "bench_eagle.json").write_text(json.dumps(payload, indent=2) + "\n")
        (out / "bench_eagle.md").write_text("```\n" + text + "\n```\n")
        print(f"wrote {out / 'bench_eagle.json'} and {out / 'bench_eagle.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
