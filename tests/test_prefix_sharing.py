"""Prefix sharing in the engine: rows whose sequences begin alike compute the shared positions once.

Exactness: every row equals the target's own greedy ``generate`` alone, on
both layouts and on a sliding-window model, whether its prefix was copied from
a row that was prefilling, from one that was decoding (a prompt that goes on
from another row's answer), or waited for. Sampling: the same seed gives the
same output with and without sharing (float64). The copies happen (counted per
row) and save passes' work; rows with a hidden-state drafter never share.
"""

from __future__ import annotations

import pytest
import torch
from test_batch import LAYOUTS, solo

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.engine import MIN_SHARED_PREFIX

from conftest import make_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = 16
COMMON = make_prompt(24, seed=60)[0]


def _prompts():
    a = torch.cat([COMMON, make_prompt(5, seed=61)[0]])
    b = torch.cat([COMMON, make_prompt(7, seed=62)[0]])
    return [a, b, a.clone(), make_prompt(9, seed=63)[0]]  # a, a sibling, a's twin, a stranger


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ["llama", "mistral_sw", "gpt2"])
def test_rows_sharing_a_prefix_copy_it_and_equal_generate_alone(arch, layout, tiny_lm):
    target = tiny_lm(arch)
    prompts = _prompts()
    gen = SpeculativeGenerator(target, NGramDrafter(num_draft_tokens=3), layout=layout)
    out = gen.generate([p.tolist() for p in prompts], max_new_tokens=NEW)
    width = max(p.shape[0] for p in prompts)
    for r, (prompt, stats) in enumerate(zip(prompts, out.row_stats, strict=True)):
        tokens = out.sequences[r, width - prompt.shape[0] : width + stats.new_tokens].tolist()
        assert tokens == solo(target, prompt, NEW), f"{arch} row {r}"
    shared = [s.shared_prefix_tokens for s in out.row_stats]
    # The first row prefills; its sibling copies the 24 common tokens, its twin all 28 before its last token
    # (which goes into its first verify block); the stranger shares nothing.
    assert shared == [0, 24, prompts[0].shape[0] - 1, 0]
    assert out.stats.shared_prefix_tokens == sum(shared)


def test_a_prompt_that_goes_on_from_a_decoding_row_copies_its_answer_too(tiny_lm):
    target = tiny_lm("qwen2")
    gen = SpeculativeGenerator(target, NGramDrafter(num_draft_tokens=3))
    first = _prompts()[0]
    handle = gen.submit(first, max_new_tokens=40)
    for _ in range(6):
        gen.engine.step()
    so_far = torch.tensor([t for block in handle.blocks for t in block.token_ids])
    assert so_far.shape[0] >= 3
    follow_up = torch.cat([first, so_far, make_prompt(4, seed=64)[0]])
    late = gen.submit(follow_up, max_new_tokens=NEW)
    gen.engine.run([handle, late])
    assert late.result().sequences[0].tolist() == solo(target, follow_up, NEW)
    assert handle.result().sequences[0].tolist() == solo(target, first, 40)
    # Everything the first row had cached when the follow-up arrived: its prompt and all but its newest token.
    assert late.result().stats.shared_prefix_tokens >= first.shape[0] + so_far.shape[0] - 1


def test_sharing_saves_work_and_turning_it_off_gives_the_same_tokens(tiny_lm):
    target = tiny_lm("llama", seed=3)
    long_common = make_prompt(120, seed=70)[0]
    prompts = [torch.cat([long_common, make_prompt(3, seed=71 + i)[0]]).tolist() for i in range(4)]
    on = SpeculativeGenerator(target, NGramDrafter(num_draft_tokens=3), max_prefill_chunk=32)
    off = SpeculativeGenerator(target, NGramDrafter(num_draft_tokens=3), max_prefill_chunk=32, share_prefixes=False)
    a = on.generate(prompts, max_new_tokens=NEW)
    b = off.generate(prompts, max_new_tokens=NEW)
    assert torch.equal(a.sequences, b.sequences)
    assert b.stats.shared_prefix_tokens == 0
    assert a.stats.shared_prefix_tokens == 3 * 120
    # The later rows waited for the first one's 120 tokens instead of computing them beside it: fewer passes
    # carried prompt chunks (each row's prefill counts in its target_forwards).
    prefill_passes = lambda out: sum(s.target_forwards - s.steps for s in out.row_stats)  # noqa: E731
    assert prefill_passes(a) < prefill_passes(b)


def test_sampled_rows_give_the_same_output_with_and_without_sharing(tiny_lm):
    target = tiny_lm("llama", seed=5, dtype=torch.float64, logit_scale=4.0)
    prompts = [p.tolist() for p in _prompts()]
    outs = [
        SpeculativeGenerator(target, NGramDrafter(), share_prefixes=share).generate(
            prompts, do_sample=True, max_new_tokens=NEW, seed=[5, 6, 7, 8]
        )
        for share in (True, False)
    ]
    assert outs[0].stats.shared_prefix_tokens > 0
    assert torch.equal(outs[0].sequences, outs[1].sequences)


def test_short_common_prefixes_are_not_shared(tiny_lm):
    target = tiny_lm("llama")
    head = make_prompt(MIN_SHARED_PREFIX - 1, seed=80)[0]
    prompts = [torch.cat([head, make_prompt(6, seed=81 + i)[0]]).tolist() for i in range(2)]
    out = SpeculativeGenerator(target, NGramDrafter()).generate(prompts, max_new_tokens=4)
    assert out.stats.shared_prefix_tokens == 0


def test_hidden_state_drafters_never_share(tmp_path, tiny_lm):
    from eagle_helpers import random_eagle3_weights, write_checkpoint

    from specdec.drafts.eagle import EagleDrafter, load_head

    target = tiny_lm("llama")
    weights, shape = random_eagle3_weights(hidden=32, seed=1)
    head = load_head(write_checkpoint(tmp_path / "head", "speculators", weights, shape), target)
    gen = SpeculativeGenerator(target, EagleDrafter(head, num_draft_tokens=3))
    assert gen.engine.share_prefixes is False
    prompts = _prompts()[:3]
    out = gen.generate([p.tolist() for p in prompts], max_new_tokens=NEW)
    assert out.stats.shared_prefix_tokens == 0
    width = max(p.shape[0] for p in prompts)
    for r, (prompt, stats) in enumerate(zip(prompts, out.row_stats, strict=True)):
        tokens = out.sequences[r, width - prompt.shape[0] : width + stats.new_tokens].tolist()
        assert tokens == solo(target, prompt, NEW), f"row {r}"
