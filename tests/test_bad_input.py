"""Bad input raises a ValueError subclass from specdec's hierarchy with a helpful message,
and a failed call leaves the generator usable (the next call is still exact)."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from specdec import (
    DrafterContractError,
    InvalidArgumentError,
    SpecDecError,
    SpeculativeGenerator,
    UnsupportedModelError,
    VocabularyMismatchError,
    check_rollback_support,
)
from specdec.drafts import ModelDrafter, NGramDrafter

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT_LEN = 6
NEW = 12


@pytest.fixture(scope="module")
def setup(tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    input_ids = prompt(PROMPT_LEN)
    reference = greedy_reference(target, input_ids, NEW)
    gen = SpeculativeGenerator(target, ModelDrafter(tiny_lm("gpt2", seed=7)))
    return gen, input_ids, reference


def assert_still_exact(gen, input_ids, reference):
    out = gen.generate(input_ids, max_new_tokens=NEW, num_draft_tokens=3)
    assert out.sequences.tolist() == reference.tolist()


BAD_CALLS = [
    # (description, kwargs without input_ids or with a replacement, error message pattern)
    ("empty prompt", dict(input_ids=torch.empty(1, 0, dtype=torch.long)), "empty"),
    ("empty list prompt", dict(input_ids=[]), "empty"),
    ("fully masked prompt", dict(attention_mask="zeros"), "empty"),
    ("float prompt", dict(input_ids=torch.rand(1, 4)), "integers"),
    ("token outside the vocabulary", dict(input_ids=torch.tensor([[3, 4, 100_000]])), "vocabulary"),
    ("batch over the row limit", dict(input_ids="batch65"), "65 rows"),
    ("max_new_tokens 0", dict(max_new_tokens=0), "max_new_tokens"),
    ("max_new_tokens negative", dict(max_new_tokens=-3), "max_new_tokens"),
    ("max_new_tokens float", dict(max_new_tokens=2.5), "max_new_tokens"),
    ("num_draft_tokens 0", dict(num_draft_tokens=0), "num_draft_tokens"),
    ("num_draft_tokens negative", dict(num_draft_tokens=-1), "num_draft_tokens"),
    ("num_draft_tokens string", dict(num_draft_tokens="4"), "num_draft_tokens"),
    ("temperature 0 when sampling", dict(do_sample=True, temperature=0.0), "temperature"),
    ("negative temperature", dict(do_sample=True, temperature=-1.0), "temperature"),
    ("top_p 0", dict(do_sample=True, top_p=0.0), "top_p"),
    ("top_p above 1", dict(do_sample=True, top_p=1.5), "top_p"),
    ("negative top_p", dict(do_sample=True, top_p=-0.2), "top_p"),
    ("negative top_k", dict(do_sample=True, top_k=-1), "top_k"),
    ("negative seed", dict(seed=-1), "seed"),
    ("bad eos", dict(eos_token_id="eos"), "eos_token_id"),
    ("beam search config", dict(generation_config=GenerationConfig(num_beams=2)), "num_beams"),
    ("not a GenerationConfig", dict(generation_config={"max_new_tokens": 3}), "GenerationConfig"),
    ("bad sink", dict(on_tokens=42), "on_tokens"),
]


@pytest.mark.parametrize("description,kwargs,pattern", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_call_raises_and_generator_stays_usable(description, kwargs, pattern, setup):
    gen, input_ids, reference = setup
    kwargs = dict(kwargs)
    call_ids = kwargs.pop("input_ids", input_ids)
    if isinstance(call_ids, str) and call_ids == "batch65":
        call_ids = input_ids.repeat(65, 1)
    if kwargs.get("attention_mask") == "zeros":
        kwargs["attention_mask"] = torch.zeros_like(input_ids)
    with pytest.raises(InvalidArgumentError, match=pattern) as info:
        gen.generate(call_ids, **{"max_new_tokens": NEW, **kwargs})
    assert isinstance(info.value, ValueError) and isinstance(info.value, SpecDecError)
    assert_still_exact(gen, input_ids, reference)


def test_valid_edge_values_are_accepted(setup):
    gen, input_ids, reference = setup
    # Greedy ignores the sampling knobs, as HF generate does.
    assert gen.generate(input_ids, max_new_tokens=NEW, temperature=0.0).sequences.tolist() == reference.tolist()
    out = gen.generate(input_ids, max_new_tokens=4, do_sample=True, top_p=1.0, top_k=0, seed=0)
    assert out.sequences.shape == (1, PROMPT_LEN + 4)
    assert gen.generate(input_ids[0], max_new_tokens=NEW).sequences.tolist() == reference.tolist()  # 1-D prompt
    assert gen.generate(input_ids[0].tolist(), max_new_tokens=NEW).sequences.tolist() == reference.tolist()


@pytest.mark.parametrize("prompt_len", [20, 25])
def test_prompt_longer_than_the_context(prompt_len, tiny_lm, prompt):
    target = tiny_lm("llama", max_position_embeddings=20)
    gen = SpeculativeGenerator(target, NGramDrafter())
    with pytest.raises(InvalidArgumentError, match="context") as info:
        gen.generate(prompt(prompt_len), max_new_tokens=4)
    assert "20" in str(info.value) and str(prompt_len) in str(info.value)
    short = prompt(5)
    out = gen.generate(short, max_new_tokens=6)
    assert out.sequences.tolist() == target.generate(short, do_sample=False, max_new_tokens=6).tolist()


def test_gpt2_context_is_n_positions(tiny_lm, prompt):
    target = tiny_lm("gpt2", n_positions=16)
    with pytest.raises(InvalidArgumentError, match="context"):
        SpeculativeGenerator(target, NGramDrafter()).generate(prompt(16), max_new_tokens=2)


def test_vocabulary_mismatch(tiny_lm):
    target = tiny_lm("llama")
    draft = tiny_lm("llama", vocab_size=100)
    with pytest.raises(VocabularyMismatchError, match="vocabulary") as info:
        SpeculativeGenerator(target, ModelDrafter(draft))
    assert isinstance(info.value, ValueError)
    assert "100" in str(info.value) and "160" in str(info.value)


def _tiny(model_type: str, **values):
    config = AutoConfig.for_model(model_type, **values)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


UNSUPPORTED = {
    # recurrent state (Mamba): nothing to crop
    "mamba": (
        lambda: transformers.MambaForCausalLM(
            transformers.MambaConfig(vocab_size=160, hidden_size=16, state_size=4, num_hidden_layers=2)
        ),
        "recurrent",
    ),
    # a hybrid of short convolutions and attention, declared in config.layer_types
    "lfm2": (
        lambda: _tiny(
            "lfm2",
            vocab_size=160,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=32,
            layer_types=["conv", "full_attention"],
        ),
        "conv",
    ),
    # linear attention layers with a custom cache
    "minimax": (
        lambda: _tiny(
            "minimax",
            vocab_size=160,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=32,
            num_local_experts=2,
            num_experts_per_tok=1,
            layer_types=["linear_attention", "full_attention"],
        ),
        "cache",
    ),
    # chunked attention (Llama 4)
    "llama4": (
        lambda: _tiny(
            "llama4_text",
            vocab_size=160,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            intermediate_size=32,
            intermediate_size_mlp=32,
            num_local_experts=2,
            attention_chunk_size=8,
        ),
        "chunked",
    ),
    # an encoder-decoder
    "t5": (
        lambda: transformers.T5ForConditionalGeneration(
            transformers.T5Config(vocab_size=160, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
        ),
        "encoder-decoder",
    ),
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_models_are_refused_at_construction(name, tiny_lm):
    build, reason = UNSUPPORTED[name]
    model = build()
    with pytest.raises(UnsupportedModelError, match=reason) as info:
        check_rollback_support(model)
    assert type(model).__name__ in str(info.value)
    with pytest.raises(UnsupportedModelError, match=reason):
        SpeculativeGenerator(model, NGramDrafter())
    with pytest.raises(UnsupportedModelError, match=reason):
        ModelDrafter(model)
    assert isinstance(info.value, ValueError) and isinstance(info.value, SpecDecError)


def test_not_a_model_is_refused():
    with pytest.raises(UnsupportedModelError):
        SpeculativeGenerator("gpt2", NGramDrafter())
    with pytest.raises(UnsupportedModelError):
        SpeculativeGenerator(torch.nn.Linear(2, 2), NGramDrafter())


def test_model_without_language_modeling_head_is_refused():
    from transformers import BertConfig, BertModel

    encoder = BertModel(
        BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    with pytest.raises(UnsupportedModelError, match="language-modeling head"):
        SpeculativeGenerator(encoder, NGramDrafter())


class _NotADrafter:
    default_num_draft_tokens = 4
    vocab_size = None

    def propose(self, max_tokens):  # no begin / update / end
        raise AssertionError


def test_not_a_drafter_is_refused(tiny_lm):
    with pytest.raises(InvalidArgumentError, match="Drafter"):
        SpeculativeGenerator(tiny_lm("llama"), _NotADrafter())


class _GreedyDrafter(NGramDrafter):
    """Proposes more tokens than asked for after the first step."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def propose(self, max_tokens):
        self.calls += 1
        block = super().propose(max_tokens)
        if self.calls >= 2:
            return type(block)(torch.tensor([5] * (max_tokens + 2)))
        return block


def test_a_misbehaving_drafter_fails_loudly_and_the_generator_recovers(tiny_lm, prompt, greedy_reference):
    target = tiny_lm("llama")
    drafter = _GreedyDrafter()
    gen = SpeculativeGenerator(target, drafter)
    input_ids = prompt(PROMPT_LEN)
    with pytest.raises(DrafterContractError, match="proposed"):
        gen.generate(input_ids, max_new_tokens=NEW, num_draft_tokens=3)
    drafter.calls = -1000
    out = gen.generate(input_ids, max_new_tokens=NEW, num_draft_tokens=3)
    assert out.sequences.tolist() == greedy_reference(target, input_ids, NEW).tolist()
