"""The kernel of the linear products in eager passes (``specdec.products``): packed oneDNN weights or torch's own.

Exactness: with packed oneDNN products every row of a batch, and a single
row, equals the target's own greedy ``generate`` token for token, on every
architecture of the suite with plain ``nn.Linear`` layers, on both layouts.
The model is left as it was: no attribute stays behind after a pass, also
after a pass that raises, and weights written after packing are packed again.
"auto" measures on the machine once and keeps the result; small models and
dtypes oneDNN does not pack stay on torch, with the reason.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_batch import LAYOUTS, left_padded, prompts_for, row_tokens, solo

from specdec import InvalidArgumentError, SpeculativeGenerator, UnsupportedModelError
from specdec.drafts import NGramDrafter
from specdec.products import BUCKETS, LinearProducts, onednn_refusal

from conftest import ARCHS

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(onednn_refusal(torch.nn.Linear(2, 2)) is not None, reason="no oneDNN packing in this torch"),
]

NEW = 20


def _no_instance_forwards(model: torch.nn.Module) -> bool:
    return all("forward" not in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_products_keep_every_row_equal_to_generate_alone(arch, layout, tiny_lm):
    target = tiny_lm(arch)
    prompts = prompts_for()
    ids, mask = left_padded(prompts)
    gen = SpeculativeGenerator(target, NGramDrafter(num_draft_tokens=3), layout=layout, products="onednn")
    assert set(gen.target.products.libraries.values()) == {"onednn"}
    out = gen.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    for r, prompt in enumerate(prompts):
        assert row_tokens(out, r, ids.shape[1]) == solo(target, prompt, NEW), f"{arch} row {r}"
    one = gen.generate(prompts[1], max_new_tokens=NEW)
    assert one.sequences[0].tolist() == solo(target, prompts[1], NEW)
    assert _no_instance_forwards(target)


def test_the_packed_products_are_used_in_our_passes_and_nowhere_else(tiny_lm):
    target = copy.deepcopy(tiny_lm("llama"))
    gen = SpeculativeGenerator(target, NGramDrafter(num_draft_tokens=3), products="onednn")
    calls = []
    real = torch.ops.mkldnn._linear_pointwise

    def counting(*args):
        calls.append(args[0].shape)
        return real(*args)

    prompt = prompts_for()[0]
    before = target.generate(prompt[None], do_sample=False, max_new_tokens=NEW)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.ops.mkldnn, "_linear_pointwise", counting)
        out = gen.generate(prompt, max_new_tokens=NEW)
        used = len(calls)
        after = target.generate(prompt[None], do_sample=False, max_new_tokens=NEW)
        assert len(calls) == used, "HF generate outside our passes ran the packed products"
    linears = sum(isinstance(m, torch.nn.Linear) for m in target.modules())
    assert used >= linears * out.stats.target_forwards
    assert torch.equal(out.sequences, before) and torch.equal(after, before)


def test_a_pass_that_raises_leaves_the_model_as_it_was(tiny_lm):
    target = copy.deepcopy(tiny_lm("llama"))
    gen = SpeculativeGenerator(target, NGramDrafter(num_draft_tokens=3), products="onednn")
    prompt = prompts_for()[2]

    def boom(module, args):
        raise RuntimeError("boom in layer 1")

    handle = target.model.layers[1].register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom in layer 1"):
            gen.generate(prompt, max_new_tokens=NEW)
        assert _no_instance_forwards(target)
    finally:
        handle.remove()
    assert gen.generate(prompt, max_new_tokens=NEW).sequences[0].tolist() == solo(target, prompt, NEW)


def test_weights_written_after_packing_are_packed_again(tiny_lm):
    target = copy.deepcopy(tiny_lm("llama"))
    gen = SpeculativeGenerator(target, NGramDrafter(num_draft_tokens=3), products="onednn")
    prompt = prompts_for()[1]
    first = gen.generate(prompt, max_new_tokens=NEW).sequences[0].tolist()
    with torch.no_grad():
        target.model.layers[0].mlp.down_proj.weight.mul_(-3.0)
        target.lm_head.weight.add_(0.5 * torch.randn_like(target.lm_head.weight))
    expected = solo(target, prompt, NEW)
    assert expected != first, "the change must change the output for this test to mean anything"
    assert gen.generate(prompt, max_new_tokens=NEW).sequences[0].tolist() == expected


def test_generators_on_one_model_share_one_packed_copy(tiny_lm):
    target = copy.deepcopy(tiny_lm("qwen2"))
    a = SpeculativeGenerator(target, NGramDrafter(), products="onednn")
    b = SpeculativeGenerator(target, NGramDrafter(), layout="rectangle", products="onednn")
    assert a.target.products is b.target.products


def test_bfloat16_packed_products_match_torch_within_bfloat16_rounding(tiny_lm):
    target = tiny_lm("llama", dtype=torch.bfloat16)
    products = LinearProducts(target, "onednn")
    ids = prompts_for()[3][None]
    with torch.inference_mode():
        plain = target(ids).logits.float()
        with products.scope(ids.shape[1]):
            packed = target(ids).logits.float()
    assert _no_instance_forwards(target)
    torch.testing.assert_close(packed, plain, rtol=3e-2, atol=3e-2)


def test_dtypes_and_devices_onednn_cannot_pack_are_refused_or_left_on_torch(tiny_lm):
    wide = tiny_lm("llama", dtype=torch.float64)
    with pytest.raises(UnsupportedModelError, match="float32 and bfloat16.*float64"):
        SpeculativeGenerator(wide, NGramDrafter(), products="onednn")
    gen = SpeculativeGenerator(wide, NGramDrafter())  # "auto": torch, and why
    assert set(gen.target.products.libraries.values()) == {"torch"}
    assert "float64" in gen.target.products.reason
    with pytest.raises(InvalidArgumentError, match="products must be one of 'auto', 'torch', 'onednn'"):
        SpeculativeGenerator(wide, NGramDrafter(), products="mkl")


def test_auto_leaves_test_sized_models_on_torch_without_measuring(tiny_lm, monkeypatch):
    monkeypatch.setattr(LinearProducts, "_measure", lambda *a, **k: pytest.fail("measured a tiny model"))
    products = LinearProducts(tiny_lm("llama"), "auto")
    assert set(products.libraries.values()) == {"torch"} and "too small" in products.reason


def _medium_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048, hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


def test_auto_measures_once_per_machine_and_keeps_the_result(tmp_path, monkeypatch):
    model = _medium_model()
    first = LinearProducts(model, "auto", cache=tmp_path)
    assert first.reason == "measured on this machine"
    assert set(first.times) == set(BUCKETS) and all(set(t) == {"torch", "onednn"} for t in first.times.values())
    for rows, library in first.libraries.items():
        assert library == min(first.times[rows], key=first.times[rows].get)
    (stored,) = tmp_path.glob("*.json")
    record = json.loads(stored.read_text())
    assert record["key"]["threads"] == torch.get_num_threads() and record["key"]["cpu"]
    monkeypatch.setattr(LinearProducts, "_measure", lambda *a, **k: pytest.fail("measured again"))
    again = LinearProducts(model, "auto", cache=tmp_path)
    assert again.libraries == first.libraries and "before" in again.reason
    # A pass takes the library measured at the nearest size.
    assert [again.library_for(n) for n in (1, 4, 5, 32, 33, 500)] == [
        again.libraries[b] for b in (1, 1, 16, 16, 64, 64)
    ]
    # Another thread count is another measurement.
    monkeypatch.undo()
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        LinearProducts(model, "auto", cache=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_a_spoiled_measurement_file_is_measured_again(tmp_path):
    model = _medium_model()
    LinearProducts(model, "auto", cache=tmp_path)
    (stored,) = tmp_path.glob("*.json")
    stored.write_text('{"libraries": {"1": "cuBLAS"}}')
    products = LinearProducts(model, "auto", cache=tmp_path)
    assert products.reason == "measured on this machine" and set(products.libraries) == set(BUCKETS)


def test_bad_products_is_refused_before_any_work(tiny_lm, monkeypatch):
    monkeypatch.setattr(LinearProducts, "_pack", lambda self: pytest.fail("packed before validating"))
    with pytest.raises(InvalidArgumentError, match="products must be one of"):
        SpeculativeGenerator(tiny_lm("llama"), NGramDrafter(), products=None)  # type: ignore[arg-type]
