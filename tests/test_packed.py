"""The packed layout (specdec/packed.py): only real tokens through the model, one sequence [1, T].

Oracles: every segment's logits in a packed pass equal a plain forward over
that row's kept sequence, whatever the other rows bring (lengths from 1 to
dozens, rows listed out of order, rollbacks, prefill chunks without logits);
the packed and rectangle layouts agree; the engine stays exact when a row is
admitted into a low slot while higher slots verify wide blocks; the step
budget is shared by the rows of a packed pass; the layout choice and its
reason are visible; the registered attention function changes no other call's output; grouped-query
attention without repeated keys and values equals transformers' own.
"""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from specdec import InvalidArgumentError, SpeculativeGenerator, UnsupportedModelError
from specdec.batch_target import BatchedTarget, Segment
from specdec.drafts import ModelDrafter, NGramDrafter
from specdec.packed import GROUPED_KWARG, grouped_attention, packed_attention

from conftest import build_model, make_prompt

pytestmark = pytest.mark.usefixtures("one_thread")

NEW = 24


def solo(target, prompt, new=NEW):
    return target.generate(prompt[None], do_sample=False, max_new_tokens=new)[0].tolist()


# Passes over 4 rows: (row, start, tokens, logits?) -- rows out of order, lengths 1..23, rollbacks (a start
# below the row's end), prefill chunks without logits, rows sitting a pass out.
PASSES = [
    [(2, 0, 9, False), (0, 0, 23, True), (3, 0, 1, True), (1, 0, 2, False)],
    [(1, 2, 17, True), (3, 1, 4, True), (0, 23, 1, True)],
    [(0, 20, 6, True), (2, 9, 1, True), (1, 12, 2, True), (3, 5, 11, False)],
    [(3, 16, 1, True), (0, 26, 3, True), (2, 10, 30, True)],
]


@pytest.mark.parametrize("gather", [None, 1e9], ids=["loop over rows", "padded gather"])
@pytest.mark.parametrize("arch", ["llama", "mistral_sw", "gpt2", "qwen3", "opt"])
def test_each_segment_of_a_packed_pass_equals_a_plain_forward_of_its_row(arch, gather, tiny_lm):
    model = tiny_lm(arch)
    packed = BatchedTarget(model, max_rows=4, max_len=64, layout="packed")
    packed.attention_gather = gather  # attention: one SDPA call per row, or one over the padded rectangle
    rectangle = BatchedTarget(model, max_rows=4, max_len=64, layout="rectangle")
    generator = torch.Generator().manual_seed(3)
    rows: list[list[int]] = [[], [], [], []]  # what each row's cache holds, position by position
    for n_pass, passes in enumerate(PASSES):
        segments = []
        for row, start, n, logits in passes:
            ids = torch.randint(3, 150, (n,), generator=generator)
            segments.append(Segment(row, start, ids, logits=logits))
            rows[row] = rows[row][:start] + ids.tolist()
        ours = packed.forward(segments)
        theirs = rectangle.forward(segments)
        for segment, got, other in zip(segments, ours, theirs, strict=True):
            if not segment.logits:
                assert got is None
                continue
            kept = torch.tensor(rows[segment.row][: segment.start + len(segment.token_ids)])
            plain = model(input_ids=kept[None]).logits[0, segment.start :]
            where = f"pass {n_pass}, row {segment.row}"
            assert got.shape == plain.shape, where
            assert torch.allclose(got, plain, atol=1e-5), f"{where}: the packed pass mixed rows up"
            assert torch.allclose(got, other, atol=1e-5), f"{where}: packed and rectangle differ"


def test_a_row_admitted_into_a_low_slot_while_others_verify_wide_blocks(tiny_lm):
    """The newcomer's prompt chunks sit in the packed sequence before the wide verify blocks of higher rows."""
    target = tiny_lm("llama")
    gen = SpeculativeGenerator(target, ModelDrafter(target), min_prefill_chunk=3, max_prefill_chunk=64)
    gen.engine.prefill_step_tokens = 5  # the newcomer prefills over several passes, fused with the verify blocks
    assert gen.target.layout == "packed"
    first = [make_prompt(n, seed=60 + i)[0] for i, n in enumerate((4, 11, 2))]
    handles = [gen.submit(p, max_new_tokens=60, num_draft_tokens=3) for p in first]  # still decoding when it arrives
    for _ in range(2):
        gen.engine.step()
    handles[0].cancel()
    gen.engine.step()  # slot 0 is free again
    late = make_prompt(37, seed=70)[0]
    handles.append(gen.submit(late, max_new_tokens=NEW, num_draft_tokens=2))
    seen = []
    forward = gen.target.forward

    def recording(segments):
        seen.append([(s.row, len(s.token_ids), s.logits) for s in segments])
        return forward(segments)

    gen.target.forward = recording  # type: ignore[method-assign]
    gen.engine.run(handles)
    fused = [p for p in seen if any(r == 0 and not logits for r, _, logits in p) and any(r > 0 for r, _, _ in p)]
    assert len(fused) >= 3, "the newcomer's prefill was not fused with the other rows' verify blocks"
    assert any(n > 2 for p in fused for r, n, _ in p if r > 0), "no wide verify block next to the prefill"
    assert handles[3].result().sequences[0].tolist() == solo(target, late)
    for r in (1, 2):
        assert handles[r].result().sequences[0].tolist() == solo(target, first[r], 60), f"row {r}"


def test_the_packed_step_budget_is_shared_by_the_rows(tiny_lm):
    """Packed: the verify tokens of all rows stay within ``max_step_tokens``; a row may take more than an even share."""
    target = tiny_lm("llama")
    prompts = [make_prompt(5, seed=80 + i)[0] for i in range(4)]
    gen = SpeculativeGenerator(target, ModelDrafter(target), max_step_tokens=8)
    passes = []
    forward = gen.target.forward

    def recording(segments):
        passes.append([len(s.token_ids) for s in segments if s.logits])
        return forward(segments)

    gen.target.forward = recording  # type: ignore[method-assign]
    out = gen.generate([p.tolist() for p in prompts], max_new_tokens=NEW, num_draft_tokens=5)
    for r, prompt in enumerate(prompts):
        assert out.sequences[r, : 5 + NEW].tolist() == solo(target, prompt)
    decoding = [p for p in passes if len(p) == 4]
    assert decoding and all(sum(p) <= 8 for p in decoding)
    assert any(max(p) > 2 for p in decoding)  # more than the rectangle's even share (k <= 1)


def test_the_layout_is_chosen_per_model_and_says_why(tiny_lm):
    llama = SpeculativeGenerator(tiny_lm("llama"), NGramDrafter())
    assert llama.target.layout == "packed"
    soft_capped = tiny_lm("gemma2", sliding_window=4)  # attention logit soft-capping: eager attention
    gemma2 = SpeculativeGenerator(soft_capped, NGramDrafter())
    assert gemma2.target.layout == "rectangle"
    assert "eager" in gemma2.target.layout_reason
    with pytest.raises(UnsupportedModelError, match="packed layout.*eager"):
        SpeculativeGenerator(soft_capped, NGramDrafter(), layout="packed")
    with pytest.raises(InvalidArgumentError, match="layout"):
        SpeculativeGenerator(tiny_lm("llama"), NGramDrafter(), layout="diagonal")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="rectangle"):
        SpeculativeGenerator(tiny_lm("llama"), NGramDrafter(), compile=True, layout="packed")


def test_the_packed_attention_changes_no_other_call():
    """Registered as transformers' "sdpa", it passes every call without the spans keyword through unchanged."""
    model = build_model("qwen2", seed=21)  # a model no other test has used
    ids = torch.stack([make_prompt(9, seed=90)[0], make_prompt(9, seed=91)[0]])
    mask = torch.ones_like(ids)
    ids[1, :4], mask[1, :4] = 0, 0  # left padding: the model builds its own masks
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    ALL_ATTENTION_FUNCTIONS["sdpa"] = sdpa_attention_forward  # transformers' own, locally (this instance only)
    try:
        before = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12)
        logits = model(input_ids=ids, attention_mask=mask).logits
    finally:
        del ALL_ATTENTION_FUNCTIONS["sdpa"]
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is sdpa
    BatchedTarget(model)
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is packed_attention
    assert model.config._attn_implementation == "sdpa"  # the model's configuration is untouched
    assert torch.equal(model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=12), before)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, logits)


class _Heads(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups


@pytest.mark.parametrize("groups,tokens", [(3, 1), (3, 9), (4, 5), (1, 4)])
def test_grouped_attention_equals_repeated_keys_and_values(groups, tokens):
    """Query heads folded into rows of their key/value head: the same output as transformers' repeat_kv path."""
    torch.manual_seed(groups * 10 + tokens)
    rows, kv_heads, slots, dim = 3, 2, 40, 16
    query = torch.randn(rows, kv_heads * groups, tokens, dim, dtype=torch.float64)
    key, value = (torch.randn(rows, kv_heads, slots, dim, dtype=torch.float64) for _ in range(2))
    visible = torch.rand(rows, 1, tokens, slots) < 0.6
    visible[..., 0] = True  # every query sees a slot
    mask = torch.zeros(visible.shape, dtype=torch.float64).masked_fill_(~visible, torch.finfo(torch.float64).min)
    module = _Heads(groups)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    got, _ = grouped_attention(module, query, key, value, mask, scaling=0.3)
    assert got.shape == expected.shape == (rows, tokens, kv_heads * groups, dim)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert got.is_contiguous()


def test_rectangle_passes_of_a_grouped_query_model_ask_for_grouped_attention(tiny_lm):
    """A GQA model (4 query heads on 2 key/value heads) gets the keyword, and its passes stay exact."""
    model = tiny_lm("llama")
    assert model.config.num_attention_heads > model.config.num_key_value_heads
    target = BatchedTarget(model, layout="rectangle")
    assert target.attention_kwargs == {GROUPED_KWARG: True}
    ids = make_prompt(15, seed=5)[0]
    plain = model(input_ids=ids[None]).logits[0]
    target.ensure(1, 16)
    first = target.forward([Segment(0, 0, ids[:10])])[0]
    second = target.forward([Segment(0, 10, ids[10:])])[0]
    torch.testing.assert_close(torch.cat([first, second]), plain, rtol=1e-4, atol=1e-4)
    eager = BatchedTarget(tiny_lm("gemma2", sliding_window=4), layout="rectangle")  # eager attention: no keyword
    assert eager.attention_kwargs == {}
