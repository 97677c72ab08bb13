"""The default head's prompt set: the order data shards rely on, and held-out prompts that stay held out."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from default_head_prompts import MORE_TOPICS, OPEN_PROMPTS, TASKS, TOPICS, grid_prompts  # noqa: E402


def test_the_first_grid_keeps_its_order():
    # data shards are fingerprinted by their prompts: reordering the first 720 would rebuild them all
    prompts = grid_prompts()
    assert hashlib.sha256(json.dumps(prompts[:720]).encode()).hexdigest()[:16] == "36c2af976bb09d8a"
    assert len(prompts) == len(set(prompts)) == (len(TOPICS) + len(MORE_TOPICS)) * len(TASKS) == 1440


def test_open_prompts_are_not_in_the_grid():
    assert not set(OPEN_PROMPTS) & set(grid_prompts()) and not set(TOPICS) & set(MORE_TOPICS)
    words = ("tide", "lighthouse", "blacksmith", "guitar", "refrigerator", "dragon", "picnic", "leader")
    assert not [p for p in grid_prompts() if any(w in p.lower() for w in words)]
