"""NGramDrafter: context -> expected draft tables, a brute-force cross-check, and an incremental index."""

from __future__ import annotations

import random
import time

import pytest
import torch

from specdec import DraftBlock, DraftContext, Drafter, InvalidArgumentError, LogitsShaper
from specdec.drafts import NGramDrafter


def begin(drafter: NGramDrafter, context: list[int]) -> NGramDrafter:
    drafter.begin(
        DraftContext(
            prompt_ids=torch.tensor(context, dtype=torch.long),
            shaper=LogitsShaper(),
            vocab_size=100,
            seed=0,
            max_new_tokens=64,
        )
    )
    return drafter


def propose(context: list[int], k: int = 8, **config) -> list[int]:
    block = begin(NGramDrafter(**config), context).propose(k)
    assert isinstance(block, DraftBlock) and block.draft_probs is None
    assert block.token_ids.dtype == torch.long and block.token_ids.dim() == 1
    return block.token_ids.tolist()


# (config, context, k, expected draft)
TABLE = [
    # the docstring example
    (dict(max_ngram=2), [1, 2, 3, 4, 1, 2], 8, [3, 4, 1, 2]),
    # k caps the proposal
    (dict(max_ngram=2), [1, 2, 3, 4, 1, 2], 2, [3, 4]),
    (dict(max_ngram=2), [1, 2, 3, 4, 1, 2], 1, [3]),
    # the longest suffix wins over a more recent shorter one: [1, 2] at 0 beats [2] at 4
    (dict(max_ngram=3, min_ngram=1), [1, 2, 9, 5, 2, 7, 1, 2], 3, [9, 5, 2]),
    # among equal lengths, the first occurrence wins by default, the latest with occurrence="recent"
    (dict(max_ngram=2), [1, 2, 3, 1, 2, 4, 1, 2], 8, [3, 1, 2, 4, 1, 2]),
    (dict(max_ngram=2, occurrence="recent"), [1, 2, 3, 1, 2, 4, 1, 2], 8, [4, 1, 2]),
    (dict(max_ngram=2, occurrence="first"), [1, 2, 3, 1, 2, 4, 1, 2], 2, [3, 1]),
    # max_ngram limits how long a suffix is tried
    (dict(max_ngram=3, occurrence="recent"), [1, 2, 3, 9, 2, 3, 5, 1, 2, 3], 8, [9, 2, 3, 5, 1, 2, 3]),
    (dict(max_ngram=2, occurrence="recent"), [1, 2, 3, 9, 2, 3, 5, 1, 2, 3], 8, [5, 1, 2, 3]),
    (dict(max_ngram=2), [1, 2, 3, 9, 2, 3, 5, 1, 2, 3], 8, [9, 2, 3, 5, 1, 2, 3]),
    # min_ngram: a one-token match is not enough at min_ngram=2 (the default)
    (dict(min_ngram=1), [7, 5, 3, 5], 8, [3, 5]),
    (dict(min_ngram=2), [7, 5, 3, 5], 8, []),
    (dict(), [7, 5, 3, 5], 8, []),
    # no earlier occurrence: an empty block
    (dict(), [1, 2, 3, 4], 8, []),
    (dict(), [4], 8, []),
    # a match running into the end of the context proposes what is there
    (dict(max_ngram=2, min_ngram=1), [1, 1, 1], 8, [1]),
    (dict(max_ngram=2), [1, 1, 1], 8, [1]),
    (dict(max_ngram=3), [5, 6, 5, 6, 5], 8, [6, 5]),
]


@pytest.mark.parametrize("config,context,k,expected", TABLE)
def test_draft_table(config, context, k, expected):
    assert propose(context, k, **config) == expected


def brute_force(tokens: list[int], k: int, min_ngram: int, max_ngram: int, occurrence: str) -> list[int]:
    """Rescan the whole context: the longest suffix with an earlier occurrence, first or latest one."""
    for n in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
        suffix = tokens[len(tokens) - n :]
        starts = range(len(tokens) - n - 1, -1, -1) if occurrence == "recent" else range(len(tokens) - n)
        for start in starts:
            if tokens[start : start + n] == suffix:
                return tokens[start + n : start + n + k]
    return []


@pytest.mark.parametrize("occurrence", ["first", "recent"])
@pytest.mark.parametrize("min_ngram,max_ngram", [(1, 1), (1, 3), (2, 4), (3, 3)])
def test_matches_brute_force_as_the_context_grows(min_ngram, max_ngram, occurrence):
    rng = random.Random(min_ngram * 10 + max_ngram)
    for _ in range(40):
        vocab = rng.randint(2, 6)
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
        config = dict(min_ngram=min_ngram, max_ngram=max_ngram, occurrence=occurrence)
        drafter = begin(NGramDrafter(**config), prompt)
        tokens = list(prompt)
        for _ in range(10):
            k = rng.randint(1, 6)
            assert drafter.propose(k).token_ids.tolist() == brute_force(tokens, k, min_ngram, max_ngram, occurrence)
            block = [rng.randrange(vocab) for _ in range(rng.randint(1, 4))]
            drafter.update(block, num_accepted=rng.randint(0, len(block) - 1))
            tokens += block


def test_update_extends_the_context():
    drafter = begin(NGramDrafter(max_ngram=2), [1, 2, 3])
    assert drafter.propose(4).token_ids.tolist() == []
    drafter.update([1, 2], num_accepted=1)
    assert drafter.propose(4).token_ids.tolist() == [3, 1, 2]


def test_begin_forgets_the_previous_sequence():
    drafter = begin(NGramDrafter(min_ngram=1), [1, 2, 3, 1])
    assert drafter.propose(2).token_ids.tolist() == [2, 3]
    drafter.end()
    begin(drafter, [4, 5, 1])
    assert drafter.propose(2).token_ids.tolist() == []


def test_is_a_drafter_without_a_vocabulary():
    drafter = NGramDrafter(num_draft_tokens=5)
    assert isinstance(drafter, Drafter)
    assert drafter.default_num_draft_tokens == 5
    assert drafter.vocab_size is None


@pytest.mark.parametrize(
    "config",
    [
        dict(num_draft_tokens=0),
        dict(max_ngram=0),
        dict(min_ngram=0),
        dict(min_ngram=3, max_ngram=2),
        dict(max_ngram=2.5),
        dict(num_draft_tokens=True),
        dict(occurrence="latest"),
    ],
)
def test_bad_config(config):
    with pytest.raises(InvalidArgumentError):
        NGramDrafter(**config)


def test_index_is_incremental():
    """Each verified token adds at most one index entry per n-gram size; nothing is rebuilt."""
    drafter = begin(NGramDrafter(min_ngram=1, max_ngram=3), list(range(50)) * 40)
    index = drafter._index
    sizes = []
    for token in range(30):
        before = len(index)
        drafter.update([token % 7, 99], num_accepted=1)
        assert drafter._index is index  # the same dict, grown in place
        sizes.append(len(index) - before)
    assert max(sizes) <= 2 * 3


def _step_time(context_len: int, steps: int = 300) -> float:
    rng = random.Random(0)
    drafter = begin(NGramDrafter(max_ngram=4), [rng.randrange(50) for _ in range(context_len)])
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            drafter.propose(8)
            drafter.update([rng.randrange(50), rng.randrange(50)], num_accepted=1)
        best = min(best, time.perf_counter() - start)
    return best


def test_step_cost_does_not_grow_with_the_context():
    small, large = _step_time(500), _step_time(200_000)
    # An O(context) rescan would be about 400 times slower on the large context.
    assert large < 5 * small, (small, large)
