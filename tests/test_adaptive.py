"""The adaptive draft-length controller: deterministic logic (no timing asserts) and exactness of ``auto``."""

from __future__ import annotations

import pytest
import torch

from specdec import InvalidArgumentError, SpeculativeGenerator
from specdec.adaptive import (
    AcceptanceEstimate,
    AdaptiveDraftLength,
    CostProfile,
    best_draft_length,
    expected_tokens,
    ideal_speedup,
)
from specdec.bench import random_llama
from specdec.drafts import ModelDrafter, NGramDrafter, OracleDrafter
from specdec.types import SpecStats


def test_expected_tokens_formula():
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(1.0, 5) == 6.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert ideal_speedup(0.8, 4, 0.05, 1.2) == pytest.approx((1 - 0.8**5) / 0.2 / (0.2 + 1.2))


def test_best_draft_length_matches_worked_example():
    # alpha 0.8, c 0.05, v(k) = 1 + 0.1 k: rates 1.57, 1.88, 2.04, 2.10, 2.11, 2.08 for k = 1..6.
    assert best_draft_length(0.8, lambda k: 0.05 * k + 1 + 0.1 * k, 1, 12) == 5


def test_best_k_grows_with_alpha_and_shrinks_with_cost():
    cheap = lambda k: 1 + 0.02 * k  # noqa: E731
    dear = lambda k: 1 + 0.4 * k  # noqa: E731
    ks = [best_draft_length(a, cheap, 1, 16) for a in (0.3, 0.6, 0.8, 0.95)]
    assert ks == sorted(ks) and ks[0] < ks[-1]
    assert best_draft_length(0.8, dear, 1, 16) < best_draft_length(0.8, cheap, 1, 16)


def test_acceptance_estimate_counts_the_first_rejection_only():
    est = AcceptanceEstimate(prior_mean=0.5, prior_strength=2.0, forget=1.0)
    est.observe(4, 4)  # 4 accepted, no rejection
    est.observe(4, 1)  # 1 accepted, 1 rejection (positions 3 and 4 untested)
    est.observe(0, 0)  # nothing drafted: no evidence
    assert est.alpha == pytest.approx((1 + 5) / (2 + 6))


def test_acceptance_estimate_drifts_back_to_its_prior_while_nothing_is_drafted():
    est = AcceptanceEstimate(prior_mean=0.6, prior_strength=4.0, forget=0.9)
    for _ in range(10):
        est.observe(4, 0)  # every first draft rejected
    low = est.alpha
    assert low < 0.3
    for _ in range(60):
        est.observe(0, 0)  # the controller stopped drafting: no evidence, but the old evidence fades
    assert low < est.alpha == pytest.approx(0.6, abs=0.02)


def test_a_block_cut_after_verification_is_not_a_rejection():
    est = AcceptanceEstimate(prior_mean=0.5, prior_strength=2.0, forget=1.0)
    est.observe(4, 2, rejected=False)  # all 4 accepted, the block cut at EOS after 2
    assert est.rejected == 0.0 and est.accepted == 2.0
    est.observe(4, 1)  # a real rejection (the default)
    assert est.rejected == 1.0
    stats = SpecStats()
    stats.record_step(4, 2, rejected=False)
    stats.record_step(4, 1)
    assert stats.tested == 2 + 2 and stats.conditional_acceptance == pytest.approx(3 / 4)


def test_the_next_request_learns_this_requests_own_alpha_not_the_faded_estimate():
    profile = CostProfile()
    controller = AdaptiveDraftLength(profile, default_k=4, prior_mean=0.9)
    for _ in range(10):
        controller.observe(4, 0, 0.01, 0.1)  # every first draft rejected: alpha 0
    for _ in range(80):
        controller.observe(0, 0, 0.0, 0.1)  # drafting switched off; the running estimate drifts to its prior
    assert controller.alpha > 0.5
    controller.finish()
    assert profile.alpha_prior == pytest.approx(0.0)


def test_cost_profile_interpolates_and_extrapolates():
    profile = CostProfile()
    profile.observe(0, 0.0, 1.0)  # n = 1
    profile.observe(4, 0.4, 1.4)  # n = 5: draft 0.1 s per token
    assert profile.draft_s == pytest.approx(0.1)
    assert profile.verify_s(3) == pytest.approx(1.2)
    assert profile.verify_s(9) == pytest.approx(1.8)
    assert profile.c() == pytest.approx(0.1)
    assert profile.v(4) == pytest.approx(1.4)
    assert profile.step_cost(2) == pytest.approx(0.2 + 1.2)


def test_cost_profile_ignores_a_few_slow_steps_and_follows_a_lasting_change():
    """Steps slowed 5x by another process leave the estimate alone; a lasting slowdown takes over."""
    profile = CostProfile(window=15)
    for _ in range(10):
        profile.observe(3, 0.03, 0.100)
    for _ in range(4):  # a burst of load, in drafting and in verifying
        profile.observe(3, 0.15, 0.500)
    assert profile.verify_s(4) == pytest.approx(0.100)
    assert profile.draft_s == pytest.approx(0.010)
    for _ in range(4):  # the machine really became slower: half the window is enough
        profile.observe(3, 0.06, 0.200)
    assert profile.verify_s(4) == pytest.approx(0.200)
    assert profile.draft_s == pytest.approx(0.020)
    assert profile.step_count[4] == 18 and len(profile.step_samples[4]) == 15


def test_cost_profile_rejects_an_empty_window():
    with pytest.raises(ValueError, match="window"):
        CostProfile(window=0)


def _simulate(alpha: float, c: float, slope: float, steps: int = 200) -> AdaptiveDraftLength:
    """Feed the controller exact costs and outcomes drawn at a fixed alpha (seeded)."""
    import random

    rng = random.Random(0)
    controller = AdaptiveDraftLength(CostProfile(), default_k=4, k_max=12)
    for _ in range(steps):
        k = controller.choose()
        accepted = 0
        while accepted < k and rng.random() < alpha:
            accepted += 1
        controller.observe(k, accepted, c * k, 1.0 + slope * k)
    return controller


@pytest.mark.parametrize("alpha", [0.5, 0.8, 0.95])
def test_controller_converges_to_the_best_k(alpha):
    c, slope = 0.05, 0.1
    controller = _simulate(alpha, c, slope)
    optimum = best_draft_length(alpha, lambda k: c * k + 1 + slope * k, 1, 12)
    late = controller.chosen[-40:]
    most = max(set(late), key=late.count)
    assert abs(most - optimum) <= 1
    assert abs(controller.alpha - alpha) < 0.12


def test_controller_explores_neighbours_and_starts_at_the_default():
    controller = AdaptiveDraftLength(CostProfile(), default_k=3, explore_every=4)
    assert controller.choose() == 3
    for _ in range(12):
        k = controller.choose()
        controller.observe(k, k, 0.01 * k, 1.0 + 0.05 * k)
    assert len(set(controller.chosen)) >= 2


def test_profile_and_alpha_prior_persist_across_requests():
    profile = CostProfile()
    first = AdaptiveDraftLength(profile, default_k=4)
    for _ in range(20):
        k = first.choose()
        first.observe(k, k, 0.0, 1.0)
    first.finish()
    second = AdaptiveDraftLength(profile, default_k=4)
    assert second.acceptance.prior_mean > 0.9
    assert second.choose() > 4  # alpha ~1 and free drafts: draft long from the first step


def test_passes_shared_by_many_rows_are_priced_apart_from_one_row_passes():
    """Compute-bound 8-row passes (verify grows steeply with k) must not teach a lone request to stop drafting."""
    profile = CostProfile()
    alone = AdaptiveDraftLength(profile, default_k=8, k_max=16)
    for _ in range(30):  # one row: a flat verify cost, drafts mostly accepted
        alone.share(1)
        k = alone.choose()
        alone.observe(k, max(k - 1, 0), 0.0, 1.0 + 0.01 * k)
    alone.finish()
    lone_k = AdaptiveDraftLength(profile, default_k=8, k_max=16).best_k()
    crowded = AdaptiveDraftLength(profile, default_k=8, k_max=16)
    for _ in range(60):  # eight rows: each drafted token costs nearly a whole pass's worth
        crowded.share(8)
        k = crowded.choose()
        crowded.observe(k, max(k - 1, 0), 0.0, 8.0 + 2.0 * k)
    assert crowded.best_k() < lone_k
    assert profile.for_rows(8) is profile.for_rows(15) is not profile.for_rows(16)
    assert profile.for_rows(1) is profile and max(profile.step_s.values()) < 2.0  # no 8-row pass in it
    after = AdaptiveDraftLength(profile, default_k=8, k_max=16)
    after.share(1)
    assert after.best_k() == lone_k


def test_a_new_class_starts_from_the_nearest_measured_one_and_learns_its_own():
    profile = CostProfile()
    eight = profile.for_rows(8)
    assert not eight.measured  # nothing measured anywhere yet: nothing to start from
    for n in (1, 5, 9):
        for _ in range(15):
            eight.observe(n - 1, 0.001 * (n - 1), 8.0 + n)
    four = profile.for_rows(4)  # the nearest measured class is 8 (one step of bit length away)
    assert four.step_s == eight.step_s and four.draft_s == pytest.approx(0.001)
    assert sum(four.step_count.values()) == 0  # seeded, not counted: it still explores
    for _ in range(3):
        four.observe(4, 0.004, 2.0)
    assert four.step_s[5] == pytest.approx(2.0)  # its own samples outvote the seed
    assert eight.step_s[5] == pytest.approx(13.0)


def test_a_generator_prices_batched_passes_apart(tiny):
    gen = SpeculativeGenerator(tiny, NGramDrafter(num_draft_tokens=4))
    prompt = torch.arange(3, 40)
    gen.generate(prompt, max_new_tokens=12)
    before = sum(gen.draft_costs.step_count.values())
    out = gen.generate([prompt.tolist(), prompt.flip(0).tolist(), (prompt + 1).tolist()], max_new_tokens=12)
    shared = sum(gen.draft_costs.for_rows(2).step_count.values())
    alone = sum(gen.draft_costs.step_count.values()) - before  # steps a row ran alone once the others finished
    assert shared > 0 and shared + alone == sum(s.steps for s in out.row_stats)
    assert alone < shared


@pytest.fixture(scope="module")
def tiny():
    return random_llama(vocab_size=128, hidden_size=32, num_layers=2, intermediate_size=64, num_heads=4, seed=0)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
def test_auto_is_exact_with_the_oracle(tiny, alpha):
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.inference_mode():
        reference = tiny.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=48)
    gen = SpeculativeGenerator(tiny, OracleDrafter(reference[0], alpha, seed=1))
    for _ in range(2):  # the second request starts from the learned profile
        out = gen.generate(prompt, max_new_tokens=48, num_draft_tokens="auto")
        assert torch.equal(out.sequences, reference)
    assert gen.draft_costs.measured


def test_auto_is_exact_with_ngram(tiny):
    prompt = torch.tensor([[7, 8, 9, 7, 8, 9, 7, 8, 9, 10]])
    with torch.inference_mode():
        reference = tiny.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=40)
    out = SpeculativeGenerator(tiny, NGramDrafter()).generate(prompt, max_new_tokens=40, num_draft_tokens="auto")
    assert torch.equal(out.sequences, reference)


def test_bad_draft_length_strings_are_refused(tiny):
    gen = SpeculativeGenerator(tiny, NGramDrafter())
    with pytest.raises(InvalidArgumentError, match="auto"):
        gen.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, num_draft_tokens="fast")


def test_a_useless_expensive_drafter_is_switched_off():
    controller = _simulate(alpha=0.0, c=0.5, slope=0.3)
    late = controller.chosen[-40:]
    assert late.count(0) > len(late) // 2


def _context(prompt, adaptive):
    from specdec import DraftContext, LogitsShaper

    return DraftContext(
        prompt_ids=prompt[0], shaper=LogitsShaper(), vocab_size=128, seed=0, max_new_tokens=16, adaptive=adaptive
    )


def test_model_drafter_stops_early_only_under_auto(tiny):
    """Under "auto" a ModelDrafter cuts a proposal once its own prefix confidence drops; a fixed k never does."""
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    # A random 128-token model is never 99.9% sure of its next token.
    for threshold, adaptive, expected in [(0.999, True, 1), (0.999, False, 3), (0.0, True, 3)]:
        drafter = ModelDrafter(tiny, min_prefix_confidence=threshold)
        drafter.begin(_context(prompt, adaptive))
        assert drafter.propose(3).token_ids.shape[0] == expected, (threshold, adaptive)
        drafter.end()
    with torch.inference_mode():
        reference = tiny.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=40)
    gen = SpeculativeGenerator(tiny, ModelDrafter(tiny, min_prefix_confidence=0.999))
    for k in ("auto", 3):
        assert torch.equal(gen.generate(prompt, max_new_tokens=40, num_draft_tokens=k).sequences, reference)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, "high", True, None])
def test_bad_prefix_confidence_is_refused(tiny, bad):
    with pytest.raises(InvalidArgumentError, match="min_prefix_confidence"):
        ModelDrafter(tiny, min_prefix_confidence=bad)
