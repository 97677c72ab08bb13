"""OracleDrafter: a fixed acceptance rate, exact output, and argument checks."""

from __future__ import annotations

import pytest
import torch

from specdec import DraftContext, Drafter, InvalidArgumentError, LogitsShaper, SpeculativeGenerator
from specdec.drafts import OracleDrafter, oracle_token

pytestmark = pytest.mark.usefixtures("one_thread")

LONG = 240


@pytest.fixture(scope="module")
def long_reference(tiny_lm, prompt):
    target = tiny_lm("llama")
    input_ids = prompt(5)
    reference = target.generate(input_ids, do_sample=False, max_new_tokens=LONG, eos_token_id=[])
    assert reference.shape[1] == 5 + LONG
    return target, input_ids, reference


@pytest.mark.parametrize("acceptance", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_measured_acceptance_matches_the_request(acceptance, long_reference):
    target, input_ids, reference = long_reference
    gen = SpeculativeGenerator(target, OracleDrafter(reference[0], acceptance, seed=5))
    out = gen.generate(input_ids, max_new_tokens=LONG, num_draft_tokens=1, eos_token_id=[])
    assert out.sequences.tolist() == reference.tolist()
    stats = out.stats
    assert stats.drafted in (stats.steps, stats.steps - 1)  # one draft per step (none when one token is left)
    # Binomial with n ~ 100-240 draws: 4 standard deviations is below 0.13.
    assert abs(stats.acceptance_rate - acceptance) < 0.13
    if acceptance in (0.0, 1.0):
        assert stats.acceptance_rate == acceptance


def test_per_position_acceptance_with_longer_blocks(long_reference):
    """With k drafts, the first draft of each block is right with probability ``acceptance``."""
    target, input_ids, reference = long_reference
    gen = SpeculativeGenerator(target, OracleDrafter(reference[0], 0.6, seed=9))
    out = gen.generate(input_ids, max_new_tokens=LONG, num_draft_tokens=4, eos_token_id=[])
    assert out.sequences.tolist() == reference.tolist()
    stats = out.stats
    first = stats.accepted_per_position[0] / stats.drafted_per_position[0]
    assert abs(first - 0.6) < 0.15
    # Position i is accepted only if position i - 1 was: about acceptance ** (i + 1) of the blocks.
    assert stats.accepted_per_position == sorted(stats.accepted_per_position, reverse=True)


def _begin(drafter, prompt_ids, vocab_size=50):
    drafter.begin(
        DraftContext(
            prompt_ids=torch.tensor(prompt_ids), shaper=LogitsShaper(), vocab_size=vocab_size, seed=0, max_new_tokens=8
        )
    )


def test_proposals_are_right_or_certainly_wrong():
    reference = torch.arange(3, 43)
    right = wrong = 0
    for seed in range(100):
        drafter = OracleDrafter(reference, 0.5, seed=seed)
        _begin(drafter, [3, 4])
        block = drafter.propose(6).token_ids.tolist()
        assert len(block) == 6
        for position, token in enumerate(block):
            assert 0 <= token < 50
            if token == int(reference[2 + position]):
                right += 1
            else:
                wrong += 1
    assert abs(right / 600 - 0.5) < 0.08


def test_the_draw_at_a_position_does_not_depend_on_the_draft_length():
    """Every k (and auto) meets the same right/wrong pattern: a comparison of draft lengths is not a comparison of luck.

    Each k runs as the loop would: drafts are kept up to the first wrong one, which the target replaces
    with the reference token, so different k draft (and skip) different positions.
    """
    reference = torch.arange(3, 83)
    prompt = [3, 4]
    drawn: dict[int, dict[int, int]] = {}
    for k in (1, 3, 7):
        drafter = OracleDrafter(reference, 0.6, seed=4)
        _begin(drafter, prompt)
        position, tokens = len(prompt), {}
        while position < 60:
            block = drafter.propose(k).token_ids.tolist()
            kept = 0
            while kept < len(block) and block[kept] == int(reference[position + kept]):
                kept += 1
            for i, token in enumerate(block[: kept + 1]):  # positions after the first wrong draft are never judged
                tokens[position + i] = token
            committed = [int(t) for t in reference[position : position + kept + 1]]
            drafter.update(committed, num_accepted=kept)
            position += len(committed)
        drawn[k] = tokens
    for k in (1, 3, 7):
        for position, token in drawn[k].items():
            assert token == oracle_token(reference.tolist(), position, 0.6, 4, 50)
    shared = set(drawn[1]) & set(drawn[3]) & set(drawn[7])
    assert len(shared) >= 10 and len({frozenset(d) for d in drawn.values()}) > 1  # overlapping, not identical
    assert all(drawn[1][p] == drawn[3][p] == drawn[7][p] for p in shared)


def test_same_seed_same_proposals_and_past_the_end_nothing():
    reference = torch.arange(3, 13)
    proposals = []
    for _ in range(2):
        drafter = OracleDrafter(reference, 0.5, seed=11)
        _begin(drafter, [3, 4, 5])
        blocks = []
        for _ in range(5):  # positions 3, 5, 7, 9, 11
            block = drafter.propose(3).token_ids.tolist()
            blocks.append(block)
            drafter.update(block[:1] + [99], num_accepted=1)
        proposals.append(blocks)
    assert proposals[0] == proposals[1]
    assert [len(block) for block in proposals[0]] == [3, 3, 3, 1, 0]  # the reference holds 10 tokens
    assert isinstance(OracleDrafter(reference, 0.5), Drafter)


def test_reference_shorter_than_generation_is_still_exact(long_reference):
    target, input_ids, reference = long_reference
    short = reference[0, : 5 + 10]
    out = SpeculativeGenerator(target, OracleDrafter(short, 1.0)).generate(
        input_ids, max_new_tokens=30, num_draft_tokens=4, eos_token_id=[]
    )
    assert out.sequences.tolist() == reference[:, : 5 + 30].tolist()
    assert out.stats.drafted == out.stats.accepted == 8  # two blocks of 4 drafts + bonus cover the 10


@pytest.mark.parametrize(
    "args,kwargs",
    [
        ((torch.arange(5), -0.1), {}),
        ((torch.arange(5), 1.5), {}),
        ((torch.arange(5), "half"), {}),
        ((torch.tensor([], dtype=torch.long), 0.5), {}),
        ((torch.arange(6).reshape(2, 3), 0.5), {}),
        ((torch.arange(5), 0.5), dict(num_draft_tokens=0)),
    ],
)
def test_bad_arguments(args, kwargs):
    with pytest.raises(InvalidArgumentError):
        OracleDrafter(*args, **kwargs)


def test_reference_must_start_with_the_prompt(long_reference):
    target, input_ids, reference = long_reference
    gen = SpeculativeGenerator(target, OracleDrafter(reference[0, 1:], 0.5))
    with pytest.raises(InvalidArgumentError, match="start with the prompt"):
        gen.generate(input_ids, max_new_tokens=5)
    # The failed call leaves the generator usable once the reference fits.
    gen = SpeculativeGenerator(target, OracleDrafter(reference[0], 0.5))
    assert gen.generate(input_ids, max_new_tokens=5).sequences.tolist() == reference[:, :10].tolist()
