"""Batched and continuously scheduled speculative decoding (issue 12): exactness per row.

Greedy: every row of a batch, and every request admitted into a running
engine, equals the target's own ``generate`` on that prompt alone, token for
token, across the architectures of the exactness suite. Rows have different
prompt lengths, accept different numbers of drafts, finish at different times
(EOS, budget, cancel) and arrive mid-run. Sampling is checked statistically
per row (test_sampling's exact joint distribution) and for rows admitted
mid-run, and one seed gives one output whatever shares the batch.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_sampling import NEW as SAMPLE_NEW
from test_sampling import P_MIN, PROMPT, SMALL_VOCAB, _draft, _target, chi_square_pvalue, exact_joint

from specdec import (
    DraftBlock,
    InvalidArgumentError,
    LogitsShaper,
    SpeculativeGenerator,
    UnsupportedModelError,
)
from specdec.drafts import ModelDrafter, NGramDrafter

from conftest import ARCHS, VOCAB

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = 24
LAYOUTS = ("packed", "rectangle")  # specdec.batch_target: real tokens only, or every row padded to the widest
LENGTHS = (3, 9, 1, 13)  # prompt lengths of the rows: short, long, one token


def prompts_for(lengths=LENGTHS, seed=10):
    from conftest import make_prompt

    return [make_prompt(n, seed=seed + i)[0] for i, n in enumerate(lengths)]


def left_padded(prompts, pad=0):
    width = max(p.shape[0] for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - p.shape[0] :] = p
        mask[r, width - p.shape[0] :] = 1
    return ids, mask


def solo(target, prompt, new=NEW, **kwargs):
    return target.generate(prompt[None], do_sample=False, max_new_tokens=new, **kwargs)[0].tolist()


def row_tokens(out, r, width):
    """Row r's prompt and new tokens from a batched output (strip the left padding and the tail padding)."""
    stats = out.row_stats[r]
    return out.sequences[r, width - stats.prompt_tokens : width + stats.new_tokens].tolist()


def make_drafter(kind, target, tiny_lm, arch):
    if kind == "self":
        return ModelDrafter(target)
    if kind == "random":
        return ModelDrafter(tiny_lm("gpt2" if arch != "gpt2" else "llama", seed=7))
    return NGramDrafter(num_draft_tokens=3)


CASES = [(arch, "ngram") for arch in ARCHS] + [(arch, "self") for arch in ("llama", "gpt2", "opt", "mistral_sw")]
CASES += [("llama", "random")]
# gemma2 soft-caps its attention logits: eager attention, so the rectangle layout only (test_packed checks the choice)
LAYOUT_CASES = [(arch, kind, layout) for arch, kind in CASES for layout in LAYOUTS]
LAYOUT_CASES += [("gemma2", "ngram", "rectangle")]


@pytest.mark.parametrize("arch,kind,layout", LAYOUT_CASES)
def test_batched_greedy_equals_each_row_alone(arch, kind, layout, tiny_lm):
    target = tiny_lm(arch, sliding_window=4) if arch == "gemma2" else tiny_lm(arch)
    prompts = prompts_for()
    ids, mask = left_padded(prompts)
    blocks = []
    gen = SpeculativeGenerator(target, make_drafter(kind, target, tiny_lm, arch), layout=layout)
    assert gen.target.layout == layout
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=NEW, num_draft_tokens=3, on_tokens=_BlockSink(blocks))
    width = ids.shape[1]
    assert out.sequences.shape[0] == len(prompts)
    for r, prompt in enumerate(prompts):
        reference = solo(target, prompt)
        assert row_tokens(out, r, width) == reference, f"row {r} differs from target.generate alone"
        assert out.sequences[r, : width - prompt.shape[0]].tolist() == [gen._pad_id()] * (width - prompt.shape[0])
        streamed = [t for b in blocks if b.row == r for t in b.token_ids]
        assert streamed == reference[prompt.shape[0] :], f"row {r}: the sink's blocks differ from the output"
    assert out.stats.new_tokens == sum(s.new_tokens for s in out.row_stats)
    # The rows shared forward passes: fewer passes than the rows' verify steps together.
    assert out.stats.target_forwards < sum(s.steps for s in out.row_stats)


class _BlockSink:
    def __init__(self, blocks):
        self.blocks = blocks

    def on_block(self, block):
        self.blocks.append(block)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_right_padding_and_ragged_lists(layout, tiny_lm):
    target = tiny_lm("llama")
    prompts = prompts_for()
    width = max(p.shape[0] for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, : p.shape[0]] = p
        mask[r, : p.shape[0]] = 1
    gen = SpeculativeGenerator(target, NGramDrafter(), layout=layout)
    right = gen.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    ragged = gen.generate([p.tolist() for p in prompts], max_new_tokens=NEW)
    for r, prompt in enumerate(prompts):
        reference = solo(target, prompt)
        assert row_tokens(right, r, width) == reference
        assert row_tokens(ragged, r, width) == reference


def _eos_in(reference, prompt_len, start=6):
    new = reference[prompt_len:]
    for i in range(start, len(new) - 4):
        if new[i] not in new[:i]:
            return new[i]
    raise AssertionError("no EOS candidate")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rows_finish_at_different_times(layout, tiny_lm):
    """EOS in one row, the budget in another, cancel in a third; the rest go on and stay exact."""
    target = tiny_lm("llama")
    prompts = prompts_for()
    gen = SpeculativeGenerator(target, ModelDrafter(target), layout=layout)
    eos = _eos_in(solo(target, prompts[0]), prompts[0].shape[0])
    budgets = [NEW, 5, NEW, 17]
    handles = [
        gen.submit(p, max_new_tokens=b, eos_token_id=eos, num_draft_tokens=3)
        for p, b in zip(prompts, budgets, strict=True)
    ]
    for _ in range(3):
        gen.engine.step()
    handles[2].cancel()
    gen.engine.run(handles)
    for r, (prompt, handle) in enumerate(zip(prompts, handles, strict=False)):
        out = handle.result()
        if r == 2:
            assert out.finish_reason == "cancelled"
            reference = solo(target, prompt, eos_token_id=eos)
            assert out.sequences[0].tolist() == reference[: out.sequences.shape[1]]
            continue
        assert out.sequences[0].tolist() == solo(target, prompt, budgets[r], eos_token_id=eos), f"row {r}"
    assert handles[0].result().finish_reason == "eos"
    assert handles[1].result().finish_reason == "length"
    assert not gen.engine.busy


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rows_admitted_mid_run_with_chunked_prefill(layout, tiny_lm):
    target = tiny_lm("qwen3")
    gen = SpeculativeGenerator(
        target, NGramDrafter(num_draft_tokens=4), min_prefill_chunk=4, max_prefill_chunk=8, layout=layout
    )
    early = prompts_for((5, 2), seed=30)
    late = prompts_for((40, 3, 11), seed=40)  # a long prompt arrives while others decode
    handles = [gen.submit(p, max_new_tokens=NEW) for p in early]
    for _ in range(4):
        gen.engine.step()
    assert all(len(h.blocks) > 0 for h in handles)
    handles += [gen.submit(p, max_new_tokens=NEW) for p in late]
    gen.engine.step()
    handles.append(gen.submit(prompts_for((6,), seed=50)[0], max_new_tokens=NEW))
    # Streaming through the handle drives the engine too.
    streamed = [t for block in handles[2] for t in block.token_ids]
    gen.engine.run(handles)
    for r, (prompt, handle) in enumerate(zip(early + late + prompts_for((6,), seed=50), handles, strict=False)):
        assert handle.result().sequences[0].tolist() == solo(target, prompt), f"request {r}"
    long_stats = handles[2].result().stats
    assert streamed == handles[2].result().sequences[0, 40:].tolist()
    assert long_stats.target_forwards >= long_stats.steps + 39 // 8  # chunked prefill: several passes
    assert gen.engine.forwards < sum(h.result().stats.target_forwards for h in handles)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float64_batch(layout, tiny_lm):
    target = tiny_lm("llama", seed=11, dtype=torch.float64)
    prompts = prompts_for()
    ids, mask = left_padded(prompts)
    gen = SpeculativeGenerator(target, ModelDrafter(target), layout=layout)
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    for r, prompt in enumerate(prompts):
        assert row_tokens(out, r, ids.shape[1]) == solo(target, prompt)


# ------------------------------------------------------------------------------------------- sampling


def _joint_counts(outputs, prompt_len=PROMPT.shape[1]):
    counts = torch.zeros(SMALL_VOCAB**SAMPLE_NEW, dtype=torch.long)
    for tokens in outputs:
        index = 0
        for token in tokens[prompt_len : prompt_len + SAMPLE_NEW]:
            index = index * SMALL_VOCAB + token
        counts[index] += 1
    return counts


@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_batched_rows_keep_the_target_distribution(kind, tiny_lm):
    target = _target(tiny_lm)
    drafter = ModelDrafter(_draft(tiny_lm)) if kind == "model" else NGramDrafter(max_ngram=2)
    gen = SpeculativeGenerator(target, drafter, max_batch_rows=64)
    draws, rows = (512 if kind == "model" else 768), 64
    outputs = []
    for start in range(0, draws, rows):
        out = gen.generate(
            PROMPT.repeat(rows, 1), do_sample=True, max_new_tokens=SAMPLE_NEW, seed=start, num_draft_tokens=2
        )
        outputs += out.sequences.tolist()
    expected = exact_joint(target, PROMPT, SAMPLE_NEW, LogitsShaper(do_sample=True))
    assert chi_square_pvalue(_joint_counts(outputs), expected) > P_MIN


def test_rows_admitted_mid_run_keep_the_target_distribution(tiny_lm):
    target = _target(tiny_lm)
    gen = SpeculativeGenerator(target, ModelDrafter(_draft(tiny_lm)), max_batch_rows=40)
    outputs = []
    for group in range(12):
        # Rows already mid-generation when the sampled ones arrive.
        background = [
            gen.submit(PROMPT[0], do_sample=True, max_new_tokens=8, seed=10_000 + group * 4 + i) for i in range(4)
        ]
        gen.engine.step()
        gen.engine.step()
        handles = [
            gen.submit(PROMPT[0], do_sample=True, max_new_tokens=SAMPLE_NEW, seed=group * 48 + i, num_draft_tokens=2)
            for i in range(48)
        ]
        gen.engine.run(handles + background)
        outputs += [h.result().sequences[0].tolist() for h in handles]
    expected = exact_joint(target, PROMPT, SAMPLE_NEW, LogitsShaper(do_sample=True))
    assert chi_square_pvalue(_joint_counts(outputs), expected) > P_MIN


@pytest.mark.parametrize("kind", ["model", "ngram"])
def test_one_seed_one_output_whatever_shares_the_batch(kind, tiny_lm):
    target = tiny_lm("llama", seed=5, dtype=torch.float64, logit_scale=4.0)
    drafter = ModelDrafter(tiny_lm("qwen2", seed=8, dtype=torch.float64)) if kind == "model" else NGramDrafter()
    gen = SpeculativeGenerator(target, drafter)
    prompts = prompts_for((7, 3, 11, 5))
    alone = gen.generate(prompts[0], do_sample=True, max_new_tokens=NEW, seed=99, num_draft_tokens=3)
    batch = gen.generate(
        [p.tolist() for p in prompts], do_sample=True, max_new_tokens=NEW, seed=[99, 1, 2, 3], num_draft_tokens=3
    )
    assert row_tokens(batch, 0, 11) == alone.sequences[0].tolist()
    other = gen.generate(
        [prompts[0].tolist(), prompts[2].tolist()], do_sample=True, max_new_tokens=NEW, seed=[99, 7], num_draft_tokens=3
    )
    assert row_tokens(other, 0, 11) == alone.sequences[0].tolist()


# ------------------------------------------------------------------------------------------- bad input


BAD_BATCHES = [
    ("not a padding mask", lambda ids, mask: (ids, _poke(mask, 1, -3, 0)), "row 1.*padding mask"),
    ("fully masked row", lambda ids, mask: (ids, _poke(mask, 2, slice(None), 0)), "row 2.*empty"),
    ("mask of another shape", lambda ids, mask: (ids, mask[:, 1:]), "shape"),
    ("token outside the vocabulary", lambda ids, mask: (_poke(ids, 3, -1, 10_000), mask), "row 3.*vocabulary"),
    ("mask with a 2", lambda ids, mask: (ids, _poke(mask, 0, -1, 2)), "0 and 1"),
]


def _poke(tensor, row, column, value):
    tensor = tensor.clone()
    tensor[row, column] = value
    return tensor


@pytest.mark.parametrize("description,spoil,pattern", BAD_BATCHES, ids=[b[0] for b in BAD_BATCHES])
def test_bad_batch_names_the_row_and_leaves_the_generator_usable(description, spoil, pattern, tiny_lm):
    target = tiny_lm("llama")
    gen = SpeculativeGenerator(target, NGramDrafter())
    prompts = prompts_for()
    ids, mask = left_padded(prompts)
    bad_ids, bad_mask = spoil(ids, mask)
    with pytest.raises(InvalidArgumentError, match=pattern):
        gen.generate(bad_ids, attention_mask=bad_mask, max_new_tokens=4)
    assert not gen.engine.busy
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=8)
    assert row_tokens(out, 1, ids.shape[1]) == solo(target, prompts[1], 8)


def test_other_bad_batch_arguments(tiny_lm):
    gen = SpeculativeGenerator(tiny_lm("llama"), NGramDrafter(), max_batch_rows=3)
    prompts = [p.tolist() for p in prompts_for()]
    with pytest.raises(InvalidArgumentError, match="4 rows.*at most 3"):
        gen.generate(prompts)
    with pytest.raises(InvalidArgumentError, match="seed has 2 entries"):
        gen.generate(prompts[:3], seed=[1, 2])
    with pytest.raises(InvalidArgumentError, match="streamer"):
        gen.generate(prompts[:2], streamer=object())
    with pytest.raises(InvalidArgumentError, match="row 1.*empty"):
        gen.generate([prompts[0], []])
    with pytest.raises(InvalidArgumentError, match="max_batch_rows"):
        SpeculativeGenerator(tiny_lm("llama"), NGramDrafter(), max_batch_rows=0)


class _FailsOnToken(NGramDrafter):
    """Raises in propose for the row whose prompt starts with ``token``."""

    def __init__(self, token):
        super().__init__(num_draft_tokens=3)
        self.token = token
        self.first = None

    def begin(self, context):
        super().begin(context)
        self.first = int(context.prompt_ids[0])

    def propose(self, max_tokens):
        if self.first == self.token and len(self.lookup(1)) >= 0 and self.calls() >= 2:
            raise ValueError("drafter failed on purpose")
        return super().propose(max_tokens)

    def calls(self):
        self.count = getattr(self, "count", 0) + 1
        return self.count


def test_a_failing_row_ends_with_its_error_and_the_others_go_on(tiny_lm):
    target = tiny_lm("llama")
    prompts = prompts_for()
    gen = SpeculativeGenerator(target, _FailsOnToken(int(prompts[1][0])))
    handles = [gen.submit(p, max_new_tokens=NEW) for p in prompts]
    gen.engine.run(handles)
    with pytest.raises(ValueError, match="on purpose"):
        handles[1].result()
    for r in (0, 2, 3):
        assert handles[r].result().sequences[0].tolist() == solo(target, prompts[r])
    # Batched generate: the other rows finish, then the row's error is raised, naming the row.
    with pytest.raises(ValueError, match="on purpose") as info:
        gen.generate([p.tolist() for p in prompts], max_new_tokens=NEW)
    assert "row 1" in "".join(getattr(info.value, "__notes__", []))
    assert not gen.engine.busy


def test_models_that_cannot_take_a_custom_mask_are_refused(tiny_lm):
    model = copy.deepcopy(tiny_lm("llama"))
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(UnsupportedModelError, match="4-D attention mask"):
        SpeculativeGenerator(model, NGramDrafter())


class _IgnoresPositions(torch.nn.Module):
    """A causal LM that drops position_ids: the construction probe must catch it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.generation_config = inner.generation_config

    def can_generate(self):
        return True

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids=None, position_ids=None, attention_mask=None, cache=None, use_cache=None, **kw):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=use_cache, **kw)


def test_a_model_that_ignores_positions_is_refused_by_the_probe(tiny_lm):
    with pytest.raises(UnsupportedModelError, match="probe"):
        SpeculativeGenerator(_IgnoresPositions(tiny_lm("llama")), NGramDrafter())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rolling_back_one_row_never_touches_another(layout, tiny_lm):
    from specdec.batch_target import BatchedTarget, Segment

    target = BatchedTarget(tiny_lm("llama"), max_rows=2, max_len=64, layout=layout)
    ids = torch.arange(3, 23)
    target.forward([Segment(0, 0, ids[:10]), Segment(1, 0, ids[:12])])
    layer = target.cache.layers[0]
    before = layer.keys[1].clone(), layer.values[1].clone()
    # Row 0 rolls back to position 4 and writes new tokens there: row 1's slots stay as they were.
    logits = target.forward([Segment(0, 4, ids[10:16])])
    assert torch.equal(layer.keys[1], before[0]) and torch.equal(layer.values[1], before[1])
    # And row 0 now reads exactly the sequence it kept: ids[:4] + ids[10:16].
    kept = torch.cat([ids[:4], ids[10:16]])
    plain = tiny_lm("llama")(input_ids=kept[None]).logits[0, 4:]
    assert torch.allclose(logits[0], plain, atol=1e-5)


def test_draft_block_sanity():
    assert len(DraftBlock.empty()) == 0
    assert VOCAB > 0


def test_the_step_budget_caps_each_rows_draft_and_keeps_every_row_exact(tiny_lm):
    """``max_step_tokens``, rectangle: decoding rows x widest block stays within it; the output does not change."""
    target = tiny_lm("llama")
    prompts = prompts_for((5, 5, 5, 5))  # the rows decode in lockstep: 4 rows in every pass
    gen = SpeculativeGenerator(target, ModelDrafter(target), max_step_tokens=8, layout="rectangle")  # k <= 1
    k = 7  # asked for; the budget cuts it
    out = gen.generate([p.tolist() for p in prompts], max_new_tokens=NEW, num_draft_tokens=k)
    width = max(p.shape[0] for p in prompts)
    for r, prompt in enumerate(prompts):
        assert row_tokens(out, r, width) == solo(target, prompt)
        assert out.row_stats[r].drafted <= out.row_stats[r].steps  # never more than one draft per step
    alone = SpeculativeGenerator(target, ModelDrafter(target), max_step_tokens=8, layout="rectangle")
    alone = alone.generate(prompts[0], max_new_tokens=NEW, num_draft_tokens=k)
    assert alone.stats.drafted > alone.stats.steps  # one row alone may draft up to 7 per step
    with pytest.raises(InvalidArgumentError, match="max_step_tokens"):
        SpeculativeGenerator(target, NGramDrafter(), max_step_tokens=0)
