"""Batched speculative decoding on SmolLM2-135M-Instruct: total tokens/s at 1, 4, 8 and 16 sequences.

A measurement, not a test. One process, one dtype (float32), systems
interleaved in every round, medians over rounds:

  (a) hf-padded   HF ``generate`` on a left-padded batch, the target alone, greedy
  (b) hf-cb       HF continuous batching (``generate_batch``), where it runs on this CPU
                  (one round by default, ``--hf-cb-rounds``: it runs, but slowly, on CPU)
  (c) ours-batch  ``SpeculativeGenerator(target, NGramDrafter()).generate(rows)`` with its defaults: one
                  engine, shared passes, the packed layout (only real tokens through the model), greedy rows
                  adapting k, linear products measured per machine (``specdec/products.py``), prefix sharing
  (c1) ours-fixed the same with the drafter's fixed k (16)
  (c2) ours-torch the same with torch's own linear products (``products="torch"``)
  (c3) ours-noshare the same without prefix sharing (``share_prefixes=False``)
  (c4) ours-rect  the rectangle layout (every row padded to the widest segment)
  (c5) ours-nocap the packed layout without the per-pass verify budget (``max_step_tokens=None``)
  (d) ours-solo   the defaults, one sequence at a time

Prompts: the input-grounded and the open prompts of the benchmark set (with
the chat template), cycled to the number of sequences. Same-token checks:
every row of every system against HF alone (a one-row ``generate`` of that
prompt, run once). Total tokens/s = tokens produced by all rows / wall time of
the whole call (prefill included).

The server part runs ``specdec serve`` (a real process, float32, its own
mosquitto via ``--start-broker``) twice: with its default ``--max-batch-rows``
(requests share forward passes) and with ``--max-batch-rows 1`` (one request
at a time, what the worker did before the engine). 8 requests are sent at once
over MQTT (``StreamClient``, the prompts of both sets cycled); the two servers
alternate, medians over rounds. Per request: time to first token (request sent
to first commit received), inter-commit gaps, and the per-token inter-token
latency (each gap split evenly over the tokens of the commit it brought);
p50/p99 pooled over requests and rounds. Server throughput = all completion
tokens / (first request sent to last end received).

    python benchmarks/bench_batched.py              # ~10+ min on 2 shared cores
    python benchmarks/bench_batched.py --quick      # 1 and 4 sequences, 24 tokens, 1 round, no JSON
    python benchmarks/bench_batched.py --no-server  # the in-process part only

Prints the CPU model, ``torch.backends.cpu.get_cpu_capability()`` and the load
average beside the numbers and writes docs/bench_batched.json and
docs/bench_batched.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specdec import SpeculativeGenerator  # noqa: E402
from specdec.bench import PROMPTS, chat_ids, environment, machine_line  # noqa: E402
from specdec.drafts import NGramDrafter  # noqa: E402
from specdec.models import load_model  # noqa: E402


def machine() -> str:
    return machine_line(environment("cpu"))


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def hf_padded(target, tokenizer, rows, new):
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    out = target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new, pad_token_id=pad)
    eos = set(_eos(target))
    produced = []
    for i in range(len(rows)):
        tokens = out[i, width:].tolist()
        cut = next((j + 1 for j, t in enumerate(tokens) if t in eos), len(tokens))
        produced.append(tokens[:cut])
    return produced


def _eos(target):
    eos = target.generation_config.eos_token_id
    return eos if isinstance(eos, list) else [eos] if eos is not None else []


def hf_cb(target, rows, new):
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=new, do_sample=False, eos_token_id=_eos(target) or None)
    results = target.generate_batch(rows, generation_config=config, progress_bar=False)
    return [list(r.generated_tokens) for r in results.values()]


LAST_STATS: dict = {}  # the stats of the last ours_batch call (prompt tokens shared, ...)


def ours_batch(gen, rows, new, **kwargs):
    out = gen.generate([list(r) for r in rows], max_new_tokens=new, **kwargs)
    LAST_STATS.clear()
    LAST_STATS.update(out.stats.as_dict())
    if len(rows) == 1:
        return [out.sequences[0, len(rows[0]) :].tolist()]
    width = max(len(r) for r in rows)
    return [out.sequences[i, width : width + s.new_tokens].tolist() for i, s in enumerate(out.row_stats)]


def ours_solo(gen, rows, new):
    return [gen.generate(list(r), max_new_tokens=new).sequences[0, len(r) :].tolist() for r in rows]


# ----------------------------------------------------------------------------- the server


class ServeProcess:
    """``specdec serve --start-broker`` in a child process, ready once it prints its ready line."""

    def __init__(self, target: str | None, rows: int | None, threads: int) -> None:
        from specdec.streaming.mqtt.broker import free_port

        self.url = f"mqtt://127.0.0.1:{free_port()}"
        command = [sys.executable, "-m", "specdec", "serve", "--broker", self.url, "--start-broker",
                   "--dtype", "float32", "--device", "cpu"]
        if target:
            command += ["--target", target]
        if rows is not None:
            command += ["--max-batch-rows", str(rows)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                                     cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 300
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise RuntimeError(f"specdec serve ({command}) was not ready in 300 s") from None
            if "specdec serve: ready" in line:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"specdec serve exited with {self.proc.returncode}: {line}")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _requests(url: str, rows: list[list[int]], new: int) -> dict:
    """Send ``rows`` at once; per request (sent, [(received, tokens)], token ids); total wall time."""
    from specdec.streaming.mqtt import StreamClient

    async with StreamClient(url) as client:

        async def one(ids: list[int]):
            sent = time.perf_counter()
            commits: list[tuple[float, int]] = []
            tokens: list[int] = []
            async for event in client.generate(input_ids=ids, max_new_tokens=new, timeout=600):
                if event.type == "commit":
                    commits.append((time.perf_counter(), len(event.token_ids)))
                    tokens += event.token_ids
            return sent, commits, tokens

        started = time.perf_counter()
        results = await asyncio.gather(*(one(r) for r in rows))
        return {"wall_s": time.perf_counter() - started, "requests": results}


def server_round(url: str, rows: list[list[int]], new: int) -> dict:
    run = asyncio.run(_requests(url, rows, new))
    ttft, gaps, per_token, produced = [], [], [], []
    for sent, commits, tokens in run["requests"]:
        produced.append(tokens)
        if not commits:
            continue
        ttft.append(commits[0][0] - sent)
        for (before, _), (at, count) in zip(commits, commits[1:], strict=False):
            gaps.append(at - before)
            per_token += [(at - before) / count] * count
    tokens = sum(len(t) for t in produced)
    return {"wall_s": run["wall_s"], "tokens": tokens, "tokens_per_s": tokens / run["wall_s"], "ttft_s": ttft,
            "commit_gap_s": gaps, "itl_s": per_token, "produced": produced}


def bench_server(args, rows: list[list[int]], reference, partial=None) -> dict:
    """The batched server (its default rows) and the one-at-a-time server, alternating, 8 requests at once."""
    configs = {"serve-batched": None, "serve-one-row": 1}
    servers: dict[str, ServeProcess] = {}
    try:
        for name, max_rows in configs.items():
            print(f"starting {name} ...", flush=True)
            servers[name] = ServeProcess(args.target, max_rows, args.threads)
            # Warm-up: every request once, short (a server runs for long; its draft-length costs and acceptance
            # priors are learnt from earlier requests, and its cache grows to the rows once).
            server_round(servers[name].url, rows, args.server_warmup_tokens)
        rounds: dict[str, list[dict]] = {name: [] for name in configs}
        for r in range(args.server_rounds):
            order = list(configs) if r % 2 == 0 else list(reversed(configs))
            for name in order:
                result = server_round(servers[name].url, rows, args.max_new_tokens)
                same = sum(p == reference(row) for p, row in zip(result.pop("produced"), rows, strict=True))
                result["same_as_hf_alone"] = f"{same}/{len(rows)}"
                rounds[name].append(result)
                print(f"[server x{len(rows)} round {r}] {name} {result['tokens_per_s']:.1f} tok/s "
                      f"({result['same_as_hf_alone']} same)  {load()}", flush=True)
                if partial is not None:  # a partial file survives an interrupted run
                    partial(rounds)
    finally:
        for server in servers.values():
            server.close()
    return summarize(rounds, configs, len(rows))


def summarize(rounds: dict[str, list[dict]], configs: dict, requests: int) -> dict:
    out: dict = {"requests": requests, "systems": {}}
    for name, results in rounds.items():
        if not results:
            continue
        pooled = {key: [v for res in results for v in res[key]] for key in ("ttft_s", "commit_gap_s", "itl_s")}
        out["systems"][name] = {
            "max_batch_rows": configs[name] or "default (16)",
            "tokens_per_s": statistics.median(res["tokens_per_s"] for res in results),
            "tokens_per_s_rounds": [res["tokens_per_s"] for res in results],
            "same_as_hf_alone": [res["same_as_hf_alone"] for res in results],
            **{f"{key}_p{q}": percentile(values, q) for key, values in pooled.items() for q in (50, 99)},
        }
    if len(out["systems"]) == 2:
        batched, one = out["systems"]["serve-batched"], out["systems"]["serve-one-row"]
        out["batched_over_one_row"] = batched["tokens_per_s"] / one["tokens_per_s"]
    return out


# ----------------------------------------------------------------------------- the report


LABELS = {
    "hf-padded": "(a) HF generate, padded", "hf-cb": "(b) HF generate_batch", "ours-batch": "(c) ours",
    "ours-fixed": "(c1) ours, k = 16", "ours-torch": "(c2) ours, torch products", "ours-noshare": "(c3) ours, no "
    "prefix sharing", "ours-rect": "(c4) ours, rectangle", "ours-nocap": "(c5) ours, no budget",
    "ours-solo": "(d) ours, one at a time",
}


def markdown(results: dict) -> str:
    lines = ["# Batched speculative decoding: total throughput and server latency", "",
             "Written by `benchmarks/bench_batched.py` (numbers in `docs/bench_batched.json`).", "",
             f"- {results['machine']}", f"- {results['load_before']} before, {results['load_after']} after",
             f"- SmolLM2-135M-Instruct, float32, greedy, {results['max_new_tokens']} new tokens per sequence "
             "(unless the table's first column says otherwise), "
             f"{results['rounds']} interleaved rounds (medians), drafter: n-gram prompt lookup (default settings)",
             "", "## In one process: total tokens/s", "",
             "Tokens/s of all rows together, prefill included; passes: the target's forward passes of one call "
             "of (c). Systems: (a) HF `generate` on a left-padded batch, (b) HF `generate_batch`; (c) ours with "
             "its defaults (packed layout, k adapted for greedy rows, linear products measured per machine, "
             "prefix sharing); (c1) with the drafter's fixed k = 16; (c2) with torch's own linear products; (c3) "
             "without prefix sharing; (c4) the rectangle layout; (c5) no per-pass verify budget; (d) the defaults, "
             "one sequence at a time.", ""]
    columns = [(name, label) for name, label in LABELS.items()
               if any(name in cell["systems"] for cell in results["cells"])]
    lines += ["| new tokens | prompts | sequences | " + " | ".join(label for _, label in columns)
              + " | (c) / best of (a),(b) | passes (c) | prompt tokens shared (c) | same tokens as HF alone "
              f"({'/'.join(label.split(')')[0] + ')' for _, label in columns)}) | load after |",
              "|" + "---|" * (len(columns) + 8)]
    for cell in sorted(results["cells"], key=lambda c: (c.get("new_tokens", results["max_new_tokens"]),
                                                        c["set"] != "grounded", c["sequences"])):
        sy = cell["systems"]

        def rate(name, sy=sy):
            v = sy.get(name, {})
            return f"{v['tokens_per_s']:.1f}" if "tokens_per_s" in v else "n/a"

        same = " · ".join(sy.get(n, {}).get("same_as_hf_alone", "-") for n, _ in columns)
        ratio = cell.get("ours_batch_over_best_hf")
        ours = sy.get("ours-batch", {})
        note = f" ({cell['note']})" if cell.get("note") else ""
        lines.append(f"| {cell.get('new_tokens', results['max_new_tokens'])} | {cell['set']}{note} | "
                     f"{cell['sequences']} | " + " | ".join(rate(n) for n, _ in columns) + " | "
                     f"{f'**{ratio:.2f}x**' if ratio else 'n/a'} | {ours.get('target_forwards', '-')} | "
                     f"{ours.get('shared_prefix_tokens', '-')} | {same} | "
                     f"{cell.get('load', '?').split(' on ')[0].removeprefix('load average ')} |")
    server = results.get("server")
    if server:
        lines += ["", f"## Through `specdec serve` (MQTT, a real mosquitto): {server['requests']} concurrent requests",
                  "", f"Load: {server.get('load', '?')}.", "",
                  "| server | tokens/s | TTFT p50 / p99 (s) | inter-token p50 / p99 (ms) "
                  "| gap between commits p50 / p99 (ms) | same tokens as HF alone |", "|---|---|---|---|---|---|"]
        for name, v in server["systems"].items():
            lines.append(
                f"| {name} (max_batch_rows {v['max_batch_rows']}) | {v['tokens_per_s']:.1f} | "
                f"{v['ttft_s_p50']:.2f} / {v['ttft_s_p99']:.2f} | "
                f"{v['itl_s_p50'] * 1e3:.0f} / {v['itl_s_p99'] * 1e3:.0f} | "
                f"{v['commit_gap_s_p50'] * 1e3:.0f} / {v['commit_gap_s_p99'] * 1e3:.0f} | "
                f"{', '.join(v['same_as_hf_alone'])} |")
        lines += ["", f"Batched server over the one-at-a-time server: **{server['batched_over_one_row']:.2f}x** "
                  "total throughput."]
    if results.get("broken"):
        lines += ["", "Systems that did not run here: " + "; ".join(f"{k}: {v}" for k, v in results["broken"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=None)
    parser.add_argument("--sizes", default="1,4,8,16")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--systems", default="hf-padded,hf-cb,ours-batch,ours-fixed,ours-torch,ours-noshare,ours-solo")
    parser.add_argument("--hf-cb-rounds", type=int, default=1, help="generate_batch is slow on CPU: fewer rounds")
    parser.add_argument("--server-requests", type=int, default=8)
    parser.add_argument("--server-rounds", type=int, default=2)
    parser.add_argument("--server-warmup-tokens", type=int, default=16,
                        help="tokens of the untimed warm-up round (all requests at once) of each server")
    parser.add_argument("--no-server", action="store_true", help="skip the specdec serve part")
    parser.add_argument("--no-inprocess", action="store_true", help="skip the in-process part")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_batched.json"))
    parser.add_argument("--md", default=str(ROOT / "docs" / "bench_batched.md"))
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="no measuring: merge these result files (e.g. an in-process and a --no-inprocess run) "
                             "into --out and --md")
    args = parser.parse_args(argv)
    if args.merge:
        merged: dict = {}
        for path in args.merge:
            part = json.loads(Path(path).read_text())
            cells = merged.get("cells", []) + part.get("cells", [])
            broken = {**merged.get("broken", {}), **part.get("broken", {})}
            merged = {**merged, **{k: v for k, v in part.items() if v or k not in merged}, "cells": cells,
                      "broken": broken}
        Path(args.out).write_text(json.dumps(merged, indent=2))
        Path(args.md).write_text(markdown(merged))
        return 0
    if args.quick:
        args.sizes, args.max_new_tokens, args.rounds, args.server_rounds = "1,4", 24, 1, 1
    torch.set_num_threads(args.threads)
    print(machine(), "|", load(), flush=True)
    target, tokenizer = load_model(args.target, dtype="float32", device="cpu", quiet=True)
    gen = SpeculativeGenerator(target, NGramDrafter())
    gen_torch = SpeculativeGenerator(target, NGramDrafter(), products="torch")
    gen_noshare = SpeculativeGenerator(target, NGramDrafter(), share_prefixes=False)
    gen_rect = SpeculativeGenerator(target, NGramDrafter(), layout="rectangle")
    gen_nocap = SpeculativeGenerator(target, NGramDrafter(), max_step_tokens=None)
    fixed_k = NGramDrafter().default_num_draft_tokens
    engines = {"ours-batch": gen, "ours-fixed": gen, "ours-torch": gen_torch, "ours-noshare": gen_noshare,
               "ours-rect": gen_rect, "ours-nocap": gen_nocap, "ours-solo": gen}
    print(f"layouts: ours-batch {gen.target.layout} ({gen.target.layout_reason}); ours-rect {gen_rect.target.layout}",
          flush=True)
    products = gen.target.products
    print(f"linear products: {products.libraries} ({products.reason}; measured seconds {products.times})", flush=True)
    systems = {
        "hf-padded": lambda rows: hf_padded(target, tokenizer, rows, args.max_new_tokens),
        "hf-cb": lambda rows: hf_cb(target, rows, args.max_new_tokens),
        "ours-batch": lambda rows: ours_batch(gen, rows, args.max_new_tokens),
        "ours-fixed": lambda rows: ours_batch(gen, rows, args.max_new_tokens, num_draft_tokens=fixed_k),
        "ours-torch": lambda rows: ours_batch(gen_torch, rows, args.max_new_tokens),
        "ours-noshare": lambda rows: ours_batch(gen_noshare, rows, args.max_new_tokens),
        "ours-rect": lambda rows: ours_batch(gen_rect, rows, args.max_new_tokens),
        "ours-nocap": lambda rows: ours_batch(gen_nocap, rows, args.max_new_tokens),
        "ours-solo": lambda rows: ours_solo(gen, rows, args.max_new_tokens),
    }
    systems = {k: v for k, v in systems.items() if k in args.systems.split(",")}
    sets = {
        "grounded": [chat_ids(tokenizer, p.text)[0].tolist() for p in PROMPTS if p.grounded],
        "open": [chat_ids(tokenizer, p.text)[0].tolist() for p in PROMPTS if not p.grounded],
    }
    references: dict[tuple, list[int]] = {}

    def reference(row: list[int]) -> list[int]:
        key = tuple(row)
        if key not in references:
            references[key] = hf_padded(target, tokenizer, [row], args.max_new_tokens)[0]
        return references[key]

    results: dict = {
        "machine": machine(), "environment": environment("cpu"), "load_before": load(),
        "max_new_tokens": args.max_new_tokens, "rounds": args.rounds, "threads": args.threads, "cells": [],
        "layout": {"ours-batch": gen.target.layout, "ours-rect": gen_rect.target.layout},
        "products": {"libraries": products.libraries, "reason": products.reason, "times_s": products.times},
        "prompt_tokens": {name: [len(p) for p in prompts] for name, prompts in sets.items()},
    }
    broken: dict[str, str] = {}
    cells = [(size, name) for size in [int(s) for s in args.sizes.split(",")] for name in sets]
    for size, set_name in cells if not args.no_inprocess else ():  # size by size (--sizes 8,... puts 8 first)
        prompts = sets[set_name]
        rows = [prompts[i % len(prompts)] for i in range(size)]
        times: dict[str, list[float]] = {name: [] for name in systems}
        tokens: dict[str, list[list[int]]] = {}
        forwards: dict[str, int] = {}
        shared: dict[str, int | None] = {}
        for r in range(args.rounds):
            order = list(systems) if r % 2 == 0 else list(reversed(systems))
            for name in order:  # interleaved: every system once per round, the order alternating
                if name in broken or (name == "hf-cb" and r >= args.hf_cb_rounds):
                    continue
                run = systems[name]
                engine = engines[name].engine if name in engines else None
                before = engine.forwards if engine else 0
                start = time.perf_counter()
                try:
                    produced = run(rows)
                except Exception as exc:  # e.g. generate_batch on a CPU build
                    broken[name] = f"{type(exc).__name__}: {str(exc)[:160]}"
                    print(f"{name} does not run here: {broken[name]}", flush=True)
                    continue
                times[name].append(time.perf_counter() - start)
                tokens[name] = produced
                shared[name] = LAST_STATS.get("shared_prefix_tokens") if name != "ours-solo" else None
                LAST_STATS.clear()
                forwards[name] = engine.forwards - before if engine else 0
        cell = {"set": set_name, "sequences": size, "new_tokens": args.max_new_tokens, "load": load(), "systems": {}}
        for name in systems:
            if not times[name]:
                cell["systems"][name] = {"error": broken.get(name)}
                continue
            produced = tokens[name]
            total = sum(len(t) for t in produced)
            median = statistics.median(times[name])
            same = sum(p == reference(r) for p, r in zip(produced, rows, strict=True))
            cell["systems"][name] = {
                "tokens": total, "median_s": median, "tokens_per_s": total / median,
                "same_as_hf_alone": f"{same}/{size}", "times_s": times[name],
            }
            if name.startswith("ours"):
                cell["systems"][name]["target_forwards"] = forwards[name]
                cell["systems"][name]["shared_prefix_tokens"] = shared.get(name)
        measured = cell["systems"]
        hf_rates = [measured[n].get("tokens_per_s", 0.0) for n in ("hf-padded", "hf-cb") if n in measured]
        best_hf = max(hf_rates, default=0.0)
        ours = cell["systems"].get("ours-batch", {}).get("tokens_per_s")
        cell["ours_batch_over_best_hf"] = ours / best_hf if ours and best_hf else None
        rect = cell["systems"].get("ours-rect", {}).get("tokens_per_s")
        cell["packed_over_rect"] = ours / rect if ours and rect else None
        results["cells"].append(cell)
        line = "  ".join(
            f"{n} {v['tokens_per_s']:.1f} tok/s ({v['same_as_hf_alone']} same)"
            if "tokens_per_s" in v
            else f"{n} n/a"
            for n, v in cell["systems"].items()
        )
        ratio = cell["ours_batch_over_best_hf"]
        tail = f"  ours-batch/best-HF {ratio:.2f}" if ratio else ""
        print(f"[{set_name} x{size}] {line}{tail}  | {cell['load']}", flush=True)
        if not args.quick:  # after every cell: a partial file survives an interrupted run
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=2))
    results["broken"] = broken
    if not args.no_server:
        every = [chat_ids(tokenizer, p.text)[0].tolist() for p in PROMPTS]
        rows = [every[i % len(every)] for i in range(args.server_requests)]

        def partial(rounds: dict) -> None:
            if not args.quick:
                part = {**results, "server": summarize(rounds, {"serve-batched": None, "serve-one-row": 1}, len(rows))}
                part["server"]["load"] = load()
                Path(args.out).write_text(json.dumps(part, indent=2))

        results["server"] = bench_server(args, rows, reference, partial)
        results["server"]["load"] = load()
        print(f"[server x{len(rows)}] batched / one-row {results['server']['batched_over_one_row']:.2f}x", flush=True)
    results["load_after"] = load()
    print(machine(), "|", results["load_after"], flush=True)
    if not args.quick:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        Path(args.md).write_text(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
