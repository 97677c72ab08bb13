"""The opaque attention call of the static path (specdec.attention): the same numbers as transformers' SDPA.

The whole static suite (tests/test_compiled.py) runs through it for its SDPA models and compares tokens with
``generate``; here the attention output itself is compared, head grouping and masks included, and the wrapping
is checked: calls without the keyword reach the wrapped function, enabling twice does not nest.
"""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from specdec import StaticConfig, attention
from specdec.batch_target import BatchedTarget, Segment
from specdec.static_target import StaticTarget

from conftest import make_prompt

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral_sw", "gpt2"])
def test_opaque_attention_gives_the_model_the_same_logits(arch, tiny_lm, monkeypatch):
    """Ragged rows on specdec's cache with its 4-D masks: the static passes (opaque attention) give the
    logits the eager passes (transformers' SDPA) give."""
    model = tiny_lm(arch)
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        pytest.skip(f"{arch} does not run SDPA here")
    eager = BatchedTarget(model, max_rows=2, max_len=64)
    static = StaticTarget(eager, StaticConfig(compile=False, max_len=64, widths=(16,)))
    prompt_a, prompt_b = make_prompt(11, seed=1)[0], make_prompt(5, seed=2)[0]
    segments = [Segment(0, 0, prompt_a), Segment(1, 0, prompt_b)]
    plain = eager.forward(segments)
    calls = []

    class Counting:
        @staticmethod
        def scaled_dot_product_attention(*args, **kwargs):
            calls.append(kwargs["enable_gqa"])
            return torch.nn.functional.scaled_dot_product_attention(*args, **kwargs)

    monkeypatch.setattr(attention, "F", Counting)
    opaque = static.forward(segments)  # the same slots again: nothing was committed
    assert len(calls) == model.config.num_hidden_layers, "the opaque call did not run in every layer"
    heads = model.config.num_attention_heads
    grouped = heads != (getattr(model.config, "num_key_value_heads", None) or heads)
    assert all(flag == grouped for flag in calls)
    for a, b in zip(plain, opaque, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_calls_without_the_keyword_reach_the_wrapped_function(monkeypatch):
    attention.enable_opaque_attention()
    seen = []
    monkeypatch.setattr(attention, "_wrapped", lambda *args, **kwargs: seen.append(kwargs) or ("wrapped", None))
    q = torch.zeros(1, 4, 1, 8)
    kv = torch.zeros(1, 2, 3, 8)
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is attention.opaque_attention
    assert attention.opaque_attention(None, q, kv, kv, None, scaling=0.5)[0] == "wrapped"
    # A setting the op does not model goes to the wrapped function too, the keyword removed.
    mask = torch.zeros(1, 1, 1, 3)
    out = attention.opaque_attention(None, q, kv, kv, mask, softcap=30.0, **{attention.OPAQUE_KWARG: True})
    assert out[0] == "wrapped" and seen[-1] == {"softcap": 30.0}


def test_enabling_twice_does_not_nest():
    attention.enable_opaque_attention()
    below = attention._wrapped
    attention.enable_opaque_attention()
    assert attention._wrapped is below and below is not attention.opaque_attention
