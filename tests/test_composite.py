"""CompositeDrafter: the choice between prompt lookup, a head and nothing (stub sources, a fake clock),
greedy exactness with an EAGLE head (one sequence and a batch), and lossless sampling."""

from __future__ import annotations

import random

import pytest
import torch
from eagle_helpers import random_eagle3_weights, write_checkpoint
from test_sampling import (
    P_MIN,
    P_WRONG,
    PROMPT,
    SMALL_VOCAB,
    _draft,
    _sampled_joint,
    _target,
    chi_square_pvalue,
    exact_joint,
)

from specdec import DraftBlock, DraftContext, InvalidArgumentError, LogitsShaper, SpeculativeGenerator
from specdec.drafts import Choice, CompositeDrafter, CostChooser, ModelDrafter, NGramDrafter, SourceCosts
from specdec.drafts.eagle import EagleDrafter, load_head

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the choice, with stubs


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class StubLookup:
    """Offers ``tokens`` after a match of length ``n`` (or nothing); costs nothing."""

    default_num_draft_tokens, vocab_size = 16, None

    def __init__(self, n: int = 0, tokens: int = 0) -> None:
        self.n, self.tokens, self.updates = n, tokens, []

    def match(self, max_tokens):
        k = min(self.tokens, max_tokens)
        return (self.n, [7] * k) if self.n and k else (0, [])

    def begin(self, context):
        pass

    def propose(self, max_tokens):
        return DraftBlock(torch.full((min(self.tokens, max_tokens),), 7, dtype=torch.long))

    def update(self, token_ids, num_accepted):
        self.updates.append(num_accepted)

    def end(self):
        pass


class StubHead:
    """Proposes any number of tokens at ``cost`` clock units each."""

    default_num_draft_tokens, vocab_size = 4, None

    def __init__(self, clock: Clock, cost: float) -> None:
        self.clock, self.cost, self.updates = clock, cost, []

    def begin(self, context):
        pass

    def propose(self, max_tokens):
        self.clock.now += self.cost * max_tokens
        return DraftBlock(torch.full((max_tokens,), 8, dtype=torch.long))

    def update(self, token_ids, num_accepted):
        self.updates.append(num_accepted)

    def end(self):
        pass


def _context():
    return DraftContext(prompt_ids=torch.tensor([1, 2, 3]), shaper=LogitsShaper(), vocab_size=100, seed=0,
                        max_new_tokens=10_000)  # fmt: skip


def simulate(drafter, clock, alphas, *, steps=300, k=16, slope=0.1, seed=0):
    """Drive ``drafter`` like the generator; each source's drafts are accepted i.i.d. with ``alphas[source]``.

    A verify pass over n positions costs ``1 + slope * (n - 1)`` clock units. Returns the choices made.
    """
    rng = random.Random(seed)
    drafter.begin(_context())
    for _ in range(steps):
        block = drafter.propose(k)
        n = len(block)
        clock.now += 1.0 + slope * n
        source = drafter.chooser.chosen[-1].source
        accepted = 0
        while accepted < n and rng.random() < alphas.get(source, 0.0):
            accepted += 1
        drafter.update([0] * (accepted + 1), accepted)
    drafter.end()
    return drafter.chooser.chosen


def tail(choices, start=100):
    later = choices[start:]
    return {s: sum(c.source == s for c in later) / len(later) for s in ("lookup", "head", "none")}


def test_a_cheap_good_head_is_used_with_several_tokens():
    clock = Clock()
    drafter = CompositeDrafter(StubLookup(), StubHead(clock, 0.05), clock=clock)
    choices = simulate(drafter, clock, {"head": 0.8})
    assert tail(choices)["head"] > 0.95
    assert sorted(c.num_tokens for c in choices[100:])[len(choices[100:]) // 2] >= 3  # median k


@pytest.mark.parametrize("alpha,cost", [(0.0, 0.05), (0.5, 1.5)])
def test_a_head_that_does_not_pay_is_switched_off(alpha, cost):
    """Always wrong, or right half the time but dearer than a target step: nearly every step drafts nothing."""
    clock = Clock()
    drafter = CompositeDrafter(StubLookup(), StubHead(clock, cost), clock=clock)
    choices = simulate(drafter, clock, {"head": alpha})
    assert tail(choices)["none"] > 0.85  # the rest: probes as the estimate drifts back to its prior


def test_a_good_match_beats_a_mediocre_head_and_a_bad_one_loses_to_a_good_head():
    clock = Clock()
    drafter = CompositeDrafter(StubLookup(n=3, tokens=10), StubHead(clock, 0.05), clock=clock)
    assert tail(simulate(drafter, clock, {"lookup": 0.9, "head": 0.4}))["lookup"] > 0.95
    clock = Clock()
    drafter = CompositeDrafter(StubLookup(n=2, tokens=10), StubHead(clock, 0.05), clock=clock)
    assert tail(simulate(drafter, clock, {"lookup": 0.0, "head": 0.8}))["head"] > 0.85


def test_lookup_alone_and_the_sources_learn_every_token():
    clock = Clock()
    lookup, head = StubLookup(n=4, tokens=6), StubHead(clock, 0.05)
    drafter = CompositeDrafter(lookup, head, clock=clock)
    simulate(drafter, clock, {"lookup": 1.0}, steps=20)
    # the head never proposed: it learns every verified block, as tokens from elsewhere
    assert len(head.updates) == 20 and set(head.updates) == {0} and max(lookup.updates) == 6
    # no head at all: lookup or nothing
    clock = Clock()
    choices = simulate(CompositeDrafter(StubLookup(), None, clock=clock), clock, {}, steps=10)
    assert {c.source for c in choices} == {"none"}


def test_first_step_before_any_measurement():
    clock = Clock()
    chooser = CostChooser()
    assert chooser.choose(16, 3, 5, head_tokens=4) == Choice("lookup", 5, 3)
    assert chooser.choose(16, 0, 0, head_tokens=4) == Choice("head", 4)
    assert chooser.choose(16, 0, 0, head_tokens=0) == Choice("none", 0)
    del clock


def test_the_docstring_example():
    costs = SourceCosts()
    costs.verify.observe_verify(0, 0.020)  # a plain step: 20 ms
    costs.verify.observe_verify(4, 0.022)  # a pass over 5 positions: 22 ms
    costs.draft_profile("head").observe_draft(1, 0.002)
    chooser = CostChooser(costs, prior_mean=0.7, prior_strength=1e9)  # alpha pinned at 0.7
    chooser.begin()
    choice = chooser.choose(16, 0, 0, head_tokens=4)
    assert choice == Choice("head", 4)
    assert chooser.rate("head", 0.7, 4) == pytest.approx(2.773 / 0.030, rel=1e-3)


def test_costs_are_shared_by_rows_and_requests_but_estimates_are_not():
    clock = Clock()
    drafter = CompositeDrafter(NGramDrafter(), EagleDrafterLike(), clock=clock)
    row = drafter.for_row()
    assert row.chooser.costs is drafter.chooser.costs and row.lookup is not drafter.lookup
    assert row.head is not drafter.head
    # a source that cannot fork: the composite cannot either (rows then wait for it, see DrafterPool)
    assert getattr(CompositeDrafter(NGramDrafter(), StubHead(clock, 0.1)), "for_row", None) is None


class EagleDrafterLike(StubHead):
    def __init__(self) -> None:
        super().__init__(Clock(), 0.0)

    def for_row(self):
        return EagleDrafterLike()


def test_bad_arguments():
    with pytest.raises(InvalidArgumentError):
        CompositeDrafter(object())
    with pytest.raises(InvalidArgumentError):
        CompositeDrafter(NGramDrafter(), object())
    with pytest.raises(InvalidArgumentError):
        CompositeDrafter(NGramDrafter(), num_draft_tokens=0)
    with pytest.raises(InvalidArgumentError):
        CostChooser(prior_mean=1.0)


# ----------------------------------------------------------------------------- exactness

NEW = 30


@pytest.fixture()
def eagle(tmp_path, tiny_lm):
    target = tiny_lm("llama", logit_scale=4.0)
    weights, shape = random_eagle3_weights(hidden=32, seed=1)
    return target, load_head(write_checkpoint(tmp_path / "h", "speculators", weights, shape), target)


def _repetitive(prompt, seed):
    ids = prompt(6, seed=seed)
    return torch.cat([ids, ids, ids[:, :3]], dim=1)  # the lookup finds matches in the prompt


def test_greedy_equals_generate_with_an_eagle_head(eagle, prompt, greedy_reference):
    target, head = eagle
    drafter = CompositeDrafter(NGramDrafter(), EagleDrafter(head, num_draft_tokens=3))
    assert drafter.target_layers == head.config.target_layers
    gen = SpeculativeGenerator(target, drafter)
    for seed in (3, 4, 5):
        for input_ids in (_repetitive(prompt, seed), prompt(7, seed=seed)):
            out = gen.generate(input_ids, max_new_tokens=NEW)
            assert out.sequences.tolist() == greedy_reference(target, input_ids, NEW).tolist()
    assert drafter.counts["lookup"] > 0 and drafter.counts["head"] > 0
    # under "auto" the generator's own policy caps k (and may ask for nothing: update without propose)
    input_ids = _repetitive(prompt, 9)
    out = gen.generate(input_ids, max_new_tokens=NEW, num_draft_tokens="auto")
    assert out.sequences.tolist() == greedy_reference(target, input_ids, NEW).tolist()


def test_greedy_batch_equals_generate_row_by_row(eagle, prompt, greedy_reference):
    target, head = eagle
    gen = SpeculativeGenerator(target, CompositeDrafter(NGramDrafter(), EagleDrafter(head)))
    rows = [_repetitive(prompt, 6)[0].tolist(), prompt(5, seed=7)[0].tolist(), prompt(9, seed=8)[0].tolist()]
    out = gen.generate(rows, max_new_tokens=NEW)
    for r, row in enumerate(rows):
        reference = greedy_reference(target, torch.tensor([row]), NEW)[0, len(row) :].tolist()
        produced = out.sequences[r, max(map(len, rows)) :].tolist()
        assert produced[: len(reference)] == reference


class Alternate:
    """A scripted chooser: the lookup (when it matches) and the head take turns, across requests (no timing)."""

    def __init__(self) -> None:
        self.step, self.chosen = 0, []

    def begin(self):
        pass

    def choose(self, max_tokens, match_length, match_tokens, head_tokens):
        self.step += 1
        if match_tokens and self.step % 2:
            choice = Choice("lookup", min(match_tokens, max_tokens), match_length)
        else:
            choice = Choice("head", max_tokens)
        self.chosen.append(choice)
        return choice

    def observe(self, *args):
        pass

    def finish(self):
        pass

    def for_row(self):
        return Alternate()


def test_sampling_keeps_the_target_distribution(tiny_lm):
    """Each block's q is its own source's (one-hot for the lookup, the draft model's for the head)."""
    target = _target(tiny_lm)
    drafter = CompositeDrafter(NGramDrafter(max_ngram=2, min_ngram=1), ModelDrafter(_draft(tiny_lm)),
                               chooser=Alternate())  # fmt: skip
    gen = SpeculativeGenerator(target, drafter)
    counts = _sampled_joint(gen, 400, 2, num_draft_tokens=1)
    expected = exact_joint(target, PROMPT, 2, LogitsShaper(do_sample=True))
    assert chi_square_pvalue(counts, expected) > P_MIN
    hotter = exact_joint(target, PROMPT, 2, LogitsShaper(do_sample=True, temperature=1.5))
    assert chi_square_pvalue(counts, hotter) < P_WRONG  # negative control
    assert drafter.counts["lookup"] >= 150 and drafter.counts["head"] >= 150  # both sources' q exercised
    assert SMALL_VOCAB == target.config.vocab_size


# ----------------------------------------------------------------------------- the CLI's --draft composite


def test_cli_builds_the_composite(eagle, tmp_path):
    from specdec.cli import make_drafter
    from specdec.cli_checks import check_model_reference

    target, _ = eagle
    weights, shape = random_eagle3_weights(hidden=32, seed=2)
    folder = write_checkpoint(tmp_path / "cli-head", "speculators", weights, shape)
    drafter = make_drafter(f"composite:{folder}", target=target, device="cpu", dtype=None, num_draft_tokens=None)
    assert isinstance(drafter, CompositeDrafter) and isinstance(drafter.head, EagleDrafter)
    assert drafter.target_layers == (0, 1, 2) and callable(drafter.for_row)
    alone = make_drafter("composite", target=target, device="cpu", dtype=None, num_draft_tokens=5)
    assert alone.head is None and alone.default_num_draft_tokens == 5
    check_model_reference("composite", "--draft")
    check_model_reference(f"composite:{folder}", "--draft")
    for bad in ("composite:", "composite:ngram", f"composite:{tmp_path / 'missing'}"):
        with pytest.raises(InvalidArgumentError):
            check_model_reference(bad, "--draft")


def test_a_bad_request_does_not_switch_a_source_off_for_good():
    """After a request whose lookup copies all failed, the next request still tries the lookup."""
    costs = SourceCosts()
    costs.record_request("lookup2", 0.0)
    chooser = CostChooser(costs)
    chooser.begin()
    assert 0.05 <= chooser.estimate("lookup2").alpha < 0.5
    assert chooser.estimate("lookup4").alpha == pytest.approx(0.7)  # a longer match starts higher
    clock = Clock()
    drafter = CompositeDrafter(StubLookup(n=2, tokens=8), None, chooser=CostChooser(costs), clock=clock)
    simulate(drafter, clock, {"lookup": 0.0}, steps=30)  # a request that learns: copies fail
    choices = simulate(drafter, clock, {"lookup": 1.0}, steps=60)  # then they are right again
    assert tail(choices, 30)["lookup"] > 0.9


def test_long_copies_that_are_all_or_nothing_are_proposed_whole():
    """Copies right half the time, but then entirely: the lookup proposes the whole match."""
    clock = Clock()
    drafter = CompositeDrafter(StubLookup(n=3, tokens=16), None, clock=clock)
    rng = random.Random(1)
    drafter.begin(_context())
    for _ in range(80):
        block = drafter.propose(16)
        clock.now += 1.0 + 0.1 * len(block)
        accepted = len(block) if len(block) and rng.random() < 0.5 else 0
        drafter.update([0] * (accepted + 1), accepted)
    later = drafter.chooser.chosen[40:]
    assert sum(c.source == "lookup" and c.num_tokens >= 12 for c in later) > 0.8 * len(later)
