"""The oracle's draw: is the draft at a given position right, and if not, which wrong token.

Shared by :class:`specdec.drafts.OracleDrafter` and the benchmark's oracle for Hugging
Face assisted generation (:mod:`specdec.benchmark.oracle_assistant`), so both
systems see the same right/wrong pattern.

The draw depends on ``(seed, position)`` only, not on how many draws came
before. Every draft length, ``auto`` included, therefore meets the same
pattern over the same text: two runs that differ only in ``k`` differ in speed
because of ``k``, not because one of them was luckier with its draws.
"""

from __future__ import annotations

import random

__all__ = ["oracle_token"]


def oracle_token(reference: list[int], position: int, acceptance: float, seed: int, vocab_size: int) -> int:
    """The token an oracle with per-token acceptance ``acceptance`` drafts at ``position``.

    With probability ``acceptance`` it is ``reference[position]`` (0 past the
    end of the reference); otherwise a different token, uniform over the rest
    of the vocabulary.
    """
    right = reference[position] if position < len(reference) else 0
    rng = random.Random(f"specdec-oracle:{seed}:{position}")
    if rng.random() < acceptance:
        return right
    return (right + 1 + rng.randrange(vocab_size - 1)) % vocab_size
