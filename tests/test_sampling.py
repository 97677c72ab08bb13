"""Speculative sampling preserves the target's distribution.

Two levels:
- ``speculative_sample`` alone, with hand-built ``target_probs`` / ``draft_probs``
  and many draws: the first token is distributed as ``target_probs[0]``, the
  second (when the first draft was accepted) as ``target_probs[1]``, and so on.
- The whole generator on a tiny model with a 16-token vocabulary: the joint
  distribution of the first three generated tokens, over many seeds, equals
  the exact one computed from the target's probabilities.

Every comparison is a chi-square goodness-of-fit test at a fixed seed, plus a
negative control showing the same test rejects a plausible wrong answer.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from specdec import LogitsShaper, SpeculativeGenerator, speculative_sample
from specdec.drafts import ModelDrafter, NGramDrafter, OracleDrafter

pytestmark = pytest.mark.usefixtures("one_thread")

P_MIN = 1e-3  # a correct sampler fails a fixed-seed check with this probability at most
P_WRONG = 1e-6  # the negative controls must be rejected this strongly


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Goodness of fit of ``counts`` [n] to ``probs`` [n]; cells expected below
    ``min_expected`` are pooled into one. Observed counts in zero-probability
    cells make the p-value 0."""
    counts = counts.double().reshape(-1)
    probs = probs.double().reshape(-1)
    total = counts.sum()
    if bool((counts[probs <= 0] > 0).any()):
        return 0.0
    expected = probs * total
    big = expected >= min_expected
    observed = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    expected = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = expected > 0
    observed, expected = observed[keep], expected[keep]
    stat = ((observed - expected) ** 2 / expected).sum()
    dof = observed.numel() - 1
    if dof < 1:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), stat / 2))


def total_variation(counts: torch.Tensor, probs: torch.Tensor) -> float:
    freq = counts.double() / counts.sum()
    return float(0.5 * (freq - probs.double()).abs().sum())


def test_chi_square_helper_sanity():
    generator = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    counts = torch.bincount(torch.multinomial(probs, 20000, replacement=True, generator=generator), minlength=4)
    assert chi_square_pvalue(counts, probs) > P_MIN
    assert chi_square_pvalue(counts, torch.tensor([0.45, 0.35, 0.15, 0.05])) < P_WRONG
    assert chi_square_pvalue(torch.tensor([1, 0, 0, 0]), torch.tensor([0.0, 1.0, 0.0, 0.0])) == 0.0



# --------------------------------------------------------------------------- the verify step alone

VOCAB = 8


def _random_probs(rows: int, seed: int, vocab: int = VOCAB, sharpness: float = 1.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(rows, vocab, generator=generator, dtype=torch.float64), dim=-1)


def _run_verifier(target_probs, draft_probs, draws, seed, fixed_draft=None):
    """Draw drafts from ``draft_probs`` (or use ``fixed_draft`` with one-hot q) and verify them.

    Returns per-position token counts: counts[i] [vocab] over the draws whose
    output has more than i tokens, and the number of accepted drafts.
    """
    k, vocab = target_probs.shape[0] - 1, target_probs.shape[1]
    verify_gen = torch.Generator().manual_seed(seed)
    draft_gen = torch.Generator().manual_seed(seed + 1)
    counts = torch.zeros(k + 1, vocab, dtype=torch.long)
    accepted = 0
    for _ in range(draws):
        if fixed_draft is None:
            draft_ids = torch.multinomial(draft_probs, 1, generator=draft_gen).squeeze(-1)  # [k]
        else:
            draft_ids = fixed_draft
        result = speculative_sample(target_probs, draft_ids, draft_probs if fixed_draft is None else None, verify_gen)
        assert len(result.token_ids) == result.num_accepted + 1
        assert result.token_ids[: result.num_accepted] == draft_ids[: result.num_accepted].tolist()
        accepted += result.num_accepted
        for position, token in enumerate(result.token_ids):
            counts[position, token] += 1
    return counts, accepted


def test_first_tokens_follow_target_probs():
    target_probs = _random_probs(3, seed=1)  # [k + 1, vocab], k = 2
    draft_probs = _random_probs(2, seed=2)  # [k, vocab]
    counts, accepted = _run_verifier(target_probs, draft_probs, draws=20000, seed=3)
    assert counts[0].sum() == 20000
    for position in range(3):
        assert chi_square_pvalue(counts[position], target_probs[position]) > P_MIN, position
    assert total_variation(counts[0], target_probs[0]) < 0.02
    # Negative control: the same test rejects the draft's distribution.
    assert chi_square_pvalue(counts[0], draft_probs[0]) < P_WRONG
    # Acceptance rate of the first draft is sum_x min(p, q) (Leviathan et al., eq. 1 / Theorem 3.5).
    expected_first = torch.minimum(target_probs[0], draft_probs[0]).sum().item()
    first_accepted = counts[1].sum().item() / 20000
    assert abs(first_accepted - expected_first) < 0.015
    assert accepted > 0


def test_one_hot_draft_follows_target_probs():
    """A drafter without probabilities (n-gram) counts as one-hot q."""
    target_probs = _random_probs(3, seed=4)
    likely = int(target_probs[0].argmax())
    fixed = torch.tensor([likely, int(target_probs[1].argmin())])
    counts, _ = _run_verifier(target_probs, None, draws=12000, seed=5, fixed_draft=fixed)
    assert chi_square_pvalue(counts[0], target_probs[0]) > P_MIN
    # The first draft is accepted with probability p(d) exactly.
    assert abs(counts[1].sum().item() / 12000 - target_probs[0, likely].item()) < 0.015
    # Given it was accepted, the next token still follows target_probs[1].
    assert chi_square_pvalue(counts[1], target_probs[1]) > P_MIN
    # Negative control: always emitting the draft token would look like this.
    wrong = torch.zeros(VOCAB, dtype=torch.float64)
    wrong[likely] = 1.0
    assert chi_square_pvalue(counts[0], 0.5 * wrong + 0.5 * target_probs[0]) < P_WRONG


def test_draft_equal_to_target_is_always_accepted():
    target_probs = _random_probs(4, seed=6)
    counts, accepted = _run_verifier(target_probs, target_probs[:3].clone(), draws=3000, seed=7)
    assert accepted == 3 * 3000  # min(1, p/q) = 1 everywhere
    assert chi_square_pvalue(counts[3], target_probs[3]) > P_MIN  # the bonus token


def test_draft_outside_target_support_is_always_rejected():
    target_probs = torch.zeros(3, VOCAB, dtype=torch.float64)
    target_probs[:, :4] = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    draft_probs = torch.zeros(2, VOCAB, dtype=torch.float64)
    draft_probs[:, 4:] = 0.25
    counts, accepted = _run_verifier(target_probs, draft_probs, draws=4000, seed=8)
    assert accepted == 0
    assert counts[0, 4:].sum() == 0
    assert chi_square_pvalue(counts[0], target_probs[0]) > P_MIN


def _hf_shaped_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """What HF ``generate`` samples from: its warpers in its order (temperature, top-k, top-p)."""
    warpers = LogitsProcessorList(
        [TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)]
    )
    dummy_ids = torch.zeros(1, 1, dtype=torch.long)
    return torch.softmax(torch.cat([warpers(dummy_ids, row[None].clone()) for row in logits]), dim=-1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 5, 0.9), (1.6, 6, 1.0), (1.0, None, 0.6)])
def test_shaped_distributions(temperature, top_k, top_p):
    generator = torch.Generator().manual_seed(9)
    target_logits = 2.0 * torch.randn(3, VOCAB, generator=generator)  # [k + 1, vocab]
    draft_logits = 2.0 * torch.randn(2, VOCAB, generator=generator)  # [k, vocab]
    shaper = LogitsShaper(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    history = torch.arange(5)
    target_probs = shaper.probs(history, target_logits)
    draft_probs = shaper.probs(history, draft_logits)
    expected = _hf_shaped_probs(target_logits, temperature, top_k or VOCAB, top_p)
    torch.testing.assert_close(target_probs, expected)
    if top_k is not None:
        assert int((target_probs > 0).sum(dim=-1).max()) <= top_k
    counts, _ = _run_verifier(target_probs.double(), draft_probs.double(), draws=8000, seed=10)
    assert chi_square_pvalue(counts[0], expected[0]) > P_MIN  # also: no token outside top-k / top-p
    assert chi_square_pvalue(counts[1], expected[1]) > P_MIN
    unshaped = torch.softmax(target_logits[0].double(), dim=-1)
    assert chi_square_pvalue(counts[0], unshaped) < P_WRONG


def test_same_generator_state_same_result():
    target_probs = _random_probs(5, seed=11)
    draft_probs = _random_probs(4, seed=12)
    draft_ids = torch.multinomial(draft_probs, 1, generator=torch.Generator().manual_seed(0)).squeeze(-1)
    runs = []
    for _ in range(2):
        gen = torch.Generator().manual_seed(123)
        runs.append([speculative_sample(target_probs, draft_ids, draft_probs, gen) for _ in range(50)])
    assert runs[0] == runs[1]
    other = torch.Generator().manual_seed(124)
    assert [speculative_sample(target_probs, draft_ids, draft_probs, other) for _ in range(50)] != runs[0]


# --------------------------------------------------------------------------- the whole generator

SMALL_VOCAB = 16
PROMPT = torch.tensor([[5, 9, 5]])  # repeats a token, so n-gram lookup has something to propose
NEW = 3


def _target(tiny_lm):
    return tiny_lm("llama", seed=3, vocab_size=SMALL_VOCAB, logit_scale=25.0, eos_token_id=None)


def _draft(tiny_lm):
    # The target's weights with flatter output: q > p on unlikely tokens, q < p on likely ones.
    return tiny_lm("llama", seed=3, vocab_size=SMALL_VOCAB, logit_scale=10.0, eos_token_id=None)


@torch.inference_mode()
def exact_joint(model, prompt: torch.Tensor, new_tokens: int, shaper: LogitsShaper) -> torch.Tensor:
    """Exact probability of every continuation of ``new_tokens`` tokens: FloatTensor [vocab] * new_tokens."""
    vocab = model.config.vocab_size
    joint = torch.ones(1, dtype=torch.float64)  # [vocab ** depth], continuations in lexicographic order
    for depth in range(new_tokens):
        prefixes = list(itertools.product(range(vocab), repeat=depth))
        batch = torch.tensor([prompt[0].tolist() + list(prefix) for prefix in prefixes])
        logits = model(batch).logits[:, -1].double()  # [vocab ** depth, vocab]
        probs = torch.cat([shaper.probs(row_ids, row[None]) for row_ids, row in zip(batch, logits, strict=False)])
        joint = (joint[:, None] * probs).reshape(-1)
    return joint


def _sampled_joint(gen, draws, new_tokens, **kwargs):
    vocab = SMALL_VOCAB
    counts = torch.zeros(vocab**new_tokens, dtype=torch.long)
    for seed in range(draws):
        out = gen.generate(PROMPT, do_sample=True, max_new_tokens=new_tokens, seed=seed, **kwargs)
        tokens = out.sequences[0, PROMPT.shape[1] :].tolist()
        assert len(tokens) == new_tokens
        index = 0
        for token in tokens:
            index = index * vocab + token
        counts[index] += 1
    return counts


@pytest.mark.parametrize(
    "drafter_kind,draws,shaping",
    [
        ("model", 1200, {}),
        ("model", 800, dict(temperature=0.8, top_k=6, top_p=0.9)),
        ("ngram", 800, {}),
        ("oracle", 800, {}),
        ("model-early-stop", 1000, {}),
    ],
)
def test_generator_preserves_target_distribution(drafter_kind, draws, shaping, tiny_lm):
    target = _target(tiny_lm)
    if drafter_kind == "model":
        drafter = ModelDrafter(_draft(tiny_lm))
    elif drafter_kind == "model-early-stop":
        drafter = AsIfAuto(ModelDrafter(_draft(tiny_lm), min_prefix_confidence=0.1))
    elif drafter_kind == "ngram":
        drafter = NGramDrafter(max_ngram=2)
    else:
        # The target's likeliest continuation, proposed half of the time.
        likely = target.generate(PROMPT, do_sample=False, max_new_tokens=NEW)[0]
        drafter = OracleDrafter(likely, acceptance=0.5, seed=1)
    gen = SpeculativeGenerator(target, drafter)
    shaper = LogitsShaper(do_sample=True, **shaping)
    expected = exact_joint(target, PROMPT, NEW, shaper)
    counts = _sampled_joint(gen, draws, NEW, num_draft_tokens=NEW - 1, **shaping)
    assert chi_square_pvalue(counts, expected) > P_MIN
    # Negative control: sampling at another temperature is rejected by the same test.
    other = LogitsShaper(do_sample=True, **{**shaping, "temperature": shaping.get("temperature", 1.0) * 1.5})
    assert chi_square_pvalue(counts, exact_joint(target, PROMPT, NEW, other)) < P_WRONG


class AsIfAuto:
    """Runs a drafter as under ``num_draft_tokens="auto"`` (it may stop early) while the test fixes k."""

    def __init__(self, inner):
        self.inner = inner
        self.default_num_draft_tokens = inner.default_num_draft_tokens
        self.vocab_size = inner.vocab_size
        self.lengths: list[int] = []

    def begin(self, context):
        self.inner.begin(dataclasses.replace(context, adaptive=True))

    def propose(self, max_tokens):
        block = self.inner.propose(max_tokens)
        self.lengths.append(int(block.token_ids.shape[0]))
        return block

    def update(self, token_ids, num_accepted):
        self.inner.update(token_ids, num_accepted)

    def end(self):
        self.inner.end()


def test_early_stop_is_exercised(tiny_lm):
    """The early-stop case above means something only if proposals are cut at different lengths."""
    drafter = AsIfAuto(ModelDrafter(_draft(tiny_lm), min_prefix_confidence=0.1))
    gen = SpeculativeGenerator(_target(tiny_lm), drafter)
    for seed in range(100):
        gen.generate(PROMPT, do_sample=True, max_new_tokens=NEW, num_draft_tokens=NEW - 1, seed=seed)
    assert {1, NEW - 1} <= set(drafter.lengths)


def test_model_drafter_is_exercised(tiny_lm):
    """The statistical test above means something only if drafts are both accepted and rejected."""
    gen = SpeculativeGenerator(_target(tiny_lm), ModelDrafter(_draft(tiny_lm)))
    drafted = accepted = 0
    for seed in range(100):
        stats = gen.generate(PROMPT, do_sample=True, max_new_tokens=NEW, num_draft_tokens=NEW - 1, seed=seed).stats
        drafted, accepted = drafted + stats.drafted, accepted + stats.accepted
    assert 0.15 < accepted / drafted < 0.85


@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_same_seed_same_output(kind, tiny_lm, prompt):
    target = tiny_lm("llama")
    drafter = ModelDrafter(tiny_lm("gpt2", seed=7)) if kind == "model" else NGramDrafter()
    gen = SpeculativeGenerator(target, drafter)
    input_ids = prompt(5)
    kwargs = dict(do_sample=True, max_new_tokens=30, num_draft_tokens=3, temperature=0.9, eos_token_id=[])
    first = gen.generate(input_ids, seed=42, **kwargs).sequences
    again = gen.generate(input_ids, seed=42, **kwargs).sequences
    fresh = SpeculativeGenerator(target, type(drafter)() if kind == "ngram" else ModelDrafter(tiny_lm("gpt2", seed=7)))
    assert first.tolist() == again.tolist()
    assert fresh.generate(input_ids, seed=42, **kwargs).sequences.tolist() == first.tolist()
    outputs = {tuple(gen.generate(input_ids, seed=seed, **kwargs).sequences[0].tolist()) for seed in range(43, 47)}
    outputs.add(tuple(first[0].tolist()))
    assert len(outputs) == 5  # different seeds, different samples
