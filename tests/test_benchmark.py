"""The benchmark engine on tiny random models: wiring, exactness of every system, report files.

No timing is asserted here (timing claims live in the benchmark scripts)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from specdec import SpecStats, SpeculativeGenerator
from specdec.bench import (
    auto_summary,
    build_cost_draft,
    configure_assistant,
    configure_oracle,
    controlled_table,
    draft_length_histogram,
    hf_summary,
    paired_ratio,
    plot_controlled,
    random_llama,
    run_bench,
    run_controlled,
    time_forward,
    write_json,
)
from specdec.drafts import NGramDrafter, OracleDrafter

VOCAB = 256


@pytest.fixture(scope="module")
def target():
    return random_llama(vocab_size=VOCAB, hidden_size=64, num_layers=2, intermediate_size=128, num_heads=4, seed=1)


@pytest.fixture(scope="module")
def draft(target):
    return build_cost_draft(target, hidden=32, layers=1, intermediate=64, seed=2)


def _reference(target, prompt, n):
    with torch.inference_mode():
        return target.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=n)


def test_oracle_assistant_puts_reference_on_top_with_alpha_one(target, draft):
    prompt = torch.tensor([[5, 9, 3, 7]])
    reference = _reference(target, prompt, 12)
    configure_oracle(draft, reference[0].tolist(), 1.0)
    with torch.inference_mode():
        drafted = draft.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=12)
    configure_oracle(draft, None)
    assert torch.equal(drafted, reference)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_hf_assisted_with_oracle_is_exact(target, draft, alpha):
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    reference = _reference(target, prompt, 20)
    configure_oracle(draft, reference[0].tolist(), alpha, seed=3)
    configure_assistant(draft, 4)
    with torch.inference_mode():
        out = target.generate(
            prompt, attention_mask=torch.ones_like(prompt), assistant_model=draft, do_sample=False, max_new_tokens=20
        )
    configure_oracle(draft, None)
    assert torch.equal(out, reference)


@pytest.mark.parametrize("k", [1, 3, "auto"])
def test_oracle_drafter_with_cost_model_is_exact_and_keeps_its_rate(target, draft, k):
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    reference = _reference(target, prompt, 40)
    drafter = OracleDrafter(reference[0], 1.0, num_draft_tokens=4, cost_model=draft)
    out = SpeculativeGenerator(target, drafter).generate(prompt, max_new_tokens=40, num_draft_tokens=k)
    assert torch.equal(out.sequences, reference)
    assert out.stats.acceptance_rate == 1.0

def test_run_controlled_reports_every_cell_with_identical_tokens(target, draft, tmp_path):
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    result = run_controlled(
        target=target, draft=draft, prompt_ids=prompt, oracle_factory=OracleDrafter,
        alphas=[0.5, 0.9], ks=[2, 4], max_new_tokens=16, rounds=1, warmup=0,
    )
    rows = result["rows"]
    assert {(r["alpha"], r["k"]) for r in rows} == {(a, k) for a in (0.5, 0.9) for k in (2, 4, "auto")}
    assert result["cost_rounds"] == 1 and set(result["verify_forward_s"]) == {"1", "2", "3", "4", "5"}
    for r in rows:
        assert r["ours_same_tokens"] is True
        if r["k"] != "auto":
            assert r["hf_same_tokens"] is True
            assert r["ideal_speedup"] > 0 and r["c"] > 0 and r["v"] > 0
    for r in rows:
        assert len(r["ours_round_s"]) == 1
        if r["k"] == "auto":
            assert sum(r["chosen_k_steps"].values()) > 0
        else:  # the same oracle pattern: HF and ours run exactly as many verify passes
            assert r["tokens_per_verify"] == pytest.approx(r["hf_tokens_per_verify"])
    text = controlled_table(result)
    assert "auto/best" in text and "paired by round" in text and "ours/HF assisted, paired" in text
    assert "HF's efficiency caps ours/HF" in text and result["ours_over_hf_ceiling"]["mean"] > 0
    assert result["auto_summary"]["worst_auto_over_best_fixed_paired"] > 0
    write_json(result, tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["rows"]
    assert plot_controlled(result, tmp_path / "c.png").stat().st_size > 1000


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # Round 2 was slow for the first system only: the paired median ignores it, a ratio of medians would not.
    assert paired_ratio([1.0, 5.0, 1.2], [0.5, 0.5, 0.6]) == pytest.approx(2.0)
    assert paired_ratio([1.0, 2.0], [1.0, 1.0]) == pytest.approx(1.5)
    assert paired_ratio([], [1.0]) is None and paired_ratio(None, [1.0]) is None


def test_auto_summary_picks_the_best_fixed_k_per_alpha_and_pairs_rounds():
    rows = []
    for alpha, speeds in ((0.5, {2: 1.0, 4: 0.9, "auto": 0.99}), (0.9, {2: 1.5, 4: 2.0, "auto": 1.9})):
        for k, speed in speeds.items():
            rows.append({"alpha": alpha, "k": k, "ours_speedup": speed, "ours_round_s": [1 / speed, 1 / speed]})
    result = {"rows": rows}
    text = auto_summary(result)
    assert "alpha=0.5: auto 0.99  best fixed k=2 1.00  auto/best 0.990  paired by round 0.990" in text
    assert "alpha=0.9: auto 1.90  best fixed k=4 2.00  auto/best 0.950" in text
    summary = result["auto_summary"]
    assert summary["best_single_fixed_k"] == 4  # mean 1.45 against 1.25
    assert summary["mean_auto_speedup"] == pytest.approx(1.445)
    assert summary["worst_auto_over_best_fixed"] == pytest.approx(0.95)
    assert summary["worst_auto_over_best_fixed_paired"] == pytest.approx(0.95)


def test_hf_summary_pairs_rounds_and_bounds_ours_over_hf():
    rows = [
        # ours twice as fast as HF in round 1, 1.5x in round 2; HF reached 0.8 of its ideal.
        {"alpha": 0.8, "k": 4, "ours_round_s": [1.0, 1.0], "hf_round_s": [2.0, 1.5], "hf_efficiency": 0.8},
        {"alpha": 0.8, "k": "auto", "ours_round_s": [1.0, 1.0]},
    ]
    result = {"rows": rows}
    text = hf_summary(result)
    assert result["ours_over_hf_paired"]["mean"] == pytest.approx(1.75)
    assert result["ours_over_hf_ceiling"]["mean"] == pytest.approx(1.25)
    assert "ours/HF assisted, paired by round: 1.750-1.750" in text and "1.25-1.25x HF" in text
    assert hf_summary({"rows": rows[1:]}) == ""


def test_draft_length_histogram_counts_steps_per_k():
    stats = SpecStats()
    for drafted, accepted in [(0, 0), (3, 1), (3, 3), (5, 2), (1, 0)]:
        stats.record_step(drafted, accepted)
    assert draft_length_histogram(stats) == {0: 1, 1: 1, 3: 2, 5: 1}


def test_conditional_acceptance_counts_tested_drafts_only_with_mixed_k():
    stats = SpecStats()
    stats.record_step(1, 1)  # tested 1, accepted 1
    stats.record_step(3, 0)  # the first draft rejected: 1 tested, 2 never judged
    stats.record_step(2, 2)  # tested 2, accepted 2
    stats.record_step(0, 0)  # nothing drafted
    assert stats.tested == 4
    assert stats.conditional_acceptance == pytest.approx(3 / 4)
    assert stats.acceptance_rate == pytest.approx(3 / 6)
    assert SpecStats().conditional_acceptance == 0.0


def test_time_forward_rolls_back(target):
    times = time_forward(target, torch.arange(10), [1, 3], repeats=2)
    assert set(times) == {1, 3} and all(t > 0 for t in times.values())


def test_run_bench_real_workload_on_a_tiny_model(tmp_path, monkeypatch, target):
    """run_bench wiring for the real workload, with the model loader swapped for a tiny model."""
    import specdec.bench.run as run_module

    class Tokenizer:
        chat_template = None

        def __call__(self, text, return_tensors=None):
            ids = torch.tensor([[ord(ch) % VOCAB for ch in text[:40]]])
            return type("Enc", (), {"input_ids": ids})()

    monkeypatch.setattr(run_module, "_load", lambda name, dtype, device: (target, Tokenizer()))
    result = run_bench(
        {"workload": "real", "quick": True, "dtype": "float32", "out_dir": str(tmp_path), "progress": False,
         "max_new_tokens": 8},
        {"ngram": NGramDrafter, "oracle": OracleDrafter},
        print_fn=lambda s: None,
    )
    (real,) = result["real"]
    assert all(row[s]["same_tokens"] for row in real["rows"] for s in real["systems"][1:])
    assert (tmp_path / "bench_real.json").exists()


def _gpu_sweep_main(argv: list[str]) -> int:
    """Run ``benchmarks/gpu_sweep.py``'s main (the script is not a package module)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_sweep.py"
    spec = importlib.util.spec_from_file_location("gpu_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_gpu_sweep_runs_end_to_end_on_cpu_with_tiny_shapes(tmp_path):
    code = _gpu_sweep_main(
        ["--device", "cpu", "--tiny", "--alphas", "0.8", "--ks", "2,4", "--max-new-tokens", "12", "--rounds", "1",
         "--warmup", "0", "--prompt-tokens", "8", "--out-dir", str(tmp_path)]
    )
    assert code == 0
    summary = json.loads((tmp_path / "bench_gpu_sweep.json").read_text())
    assert set(summary["results"]) == {"1b", "8b"}
    for result in summary["results"].values():
        assert all(r["ours_same_tokens"] for r in result["rows"])
        assert all(r["hf_same_tokens"] for r in result["rows"] if r["k"] != "auto")
        assert result["stale_reference_cells"] == []
        cell = result["compiled"]  # on a CPU: the static path's shapes, uncompiled
        assert cell["systems"]["ours-compiled"]["same_tokens_as_eager_greedy"]
        assert cell["systems"]["ours-eager"]["same_tokens_as_eager_greedy"]


def _bf16_oracle_run(seed: int, *, layers: int, stable: bool) -> tuple[float, bool, int]:
    model = random_llama(vocab_size=8000, hidden_size=512, num_layers=layers, intermediate_size=4 * 512, num_heads=8,
                         num_kv_heads=2, dtype=torch.bfloat16, seed=seed,
                         stable_greedy=stable)
    prompt = torch.randint(3, 8000, (1, 8), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        reference = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=48)
    out = SpeculativeGenerator(model, OracleDrafter(reference[0], 0.9, seed=0)).generate(
        prompt, max_new_tokens=48, num_draft_tokens=4
    )
    distinct = len(set(reference[0, 8:].tolist()))
    return out.stats.conditional_acceptance, bool(torch.equal(out.sequences, reference)), distinct


def test_stable_random_targets_keep_their_greedy_reference_in_bfloat16():
    """Why the GPU sweep builds its random targets with ``stable_greedy``.

    In bfloat16 a plain random model's verify pass over k + 1 positions often picks another token than
    ``generate``'s one-position step: ours then leaves the oracle's reference and alpha collapses. The
    stable build keeps its choice by a wide margin, even 24 layers deep, and its output is not constant.
    """
    stable = [_bf16_oracle_run(seed, layers=24, stable=True) for seed in range(3)]
    assert all(same and alpha > 0.8 for alpha, same, _ in stable), stable
    assert all(distinct > 10 for _, _, distinct in stable), stable
    plain = [_bf16_oracle_run(seed, layers=2, stable=False) for seed in range(5)]
    if all(same for _, same, _ in plain):  # depends on this CPU's bf16 kernels: informative, not a failure
        warnings.warn("the plain bf16 control kept its reference on this machine", stacklevel=1)


def test_gpu_sweep_in_bfloat16_keeps_the_oracle_reference_valid(tmp_path):
    """The sweep runs bf16 on CUDA: its stable_greedy random targets must keep choosing the reference tokens in bf16.

    Built plainly, the realised alpha collapses to ~0.01 (checked on this CPU), and the sweep would measure nothing.
    """
    code = _gpu_sweep_main(
        ["--device", "cpu", "--tiny", "--dtype", "bfloat16", "--targets", "1b", "--alphas", "0.9", "--ks", "4",
         "--max-new-tokens", "48", "--rounds", "1", "--warmup", "0", "--prompt-tokens", "8", "--no-hf",
         "--no-compiled", "--out-dir", str(tmp_path)]
    )
    assert code == 0
    result = json.loads((tmp_path / "bench_gpu_sweep.json").read_text())["results"]["1b"]
    assert result["dtype"] == "bfloat16"
    assert result["stale_reference_cells"] == []
    fixed = [r for r in result["rows"] if r["k"] == 4][0]
    assert fixed["measured_alpha"] > 0.75 and fixed["ours_same_tokens"]
