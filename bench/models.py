"""Random models and offline tokenizers: the one tiny-model factory of the tests and the benchmarks.

No hub: every model is built from a config with random weights, seeded, in
eval mode with gradients off; every tokenizer is trained offline on a given
corpus.

- :func:`random_model` builds any HF causal LM config (the tests' tiny models
  of many architectures go through it).
- :func:`random_llama` builds a Llama of any shape on any device and dtype,
  optionally with a bfloat16-stable greedy choice (``stable_greedy``) or as an
  oracle class for HF assisted generation (``model_class``).
- :func:`build_cost_draft` is the controlled workload's draft: a random Llama
  sharing the target's vocabulary, device and dtype, as an oracle model.
- :func:`byte_level_bpe` is a GPT-2 style byte-level BPE tokenizer trained on
  a small corpus (multi-byte characters split across tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from .oracle_assistant import oracle_model_class

__all__ = ["build_cost_draft", "byte_level_bpe", "random_llama", "random_model"]


def random_model(
    config: PretrainedConfig,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    model_class: type | None = None,
) -> PreTrainedModel:
    """A causal LM with random weights drawn after ``torch.manual_seed(seed)``, in eval mode, gradients off.

    The weights are drawn directly on ``device`` in ``dtype``, so a large model
    never exists in float32 or on the CPU. (The tests draw in float32 on the
    CPU and cast afterwards, so that every dtype holds the same weights.)
    ``model_class`` (default: the auto class for the config) is the class to
    instantiate.
    """
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_class(config) if model_class is not None else AutoModelForCausalLM.from_config(config)
    finally:
        torch.set_default_dtype(previous)
    # Built in place already; the cast still reaches buffers that a model makes in its own dtype (rotary tables).
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def random_llama(
    *,
    vocab_size: int,
    hidden_size: int = 32,
    num_layers: int = 2,
    intermediate_size: int | None = None,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    max_positions: int = 4096,
    special_tokens: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    model_class: type | None = None,
    stable_greedy: bool = False,
) -> PreTrainedModel:
    """A Llama-shaped causal LM with random weights, built directly on ``device`` (no hub).

    ``intermediate_size`` defaults to ``2 * hidden_size``, ``num_kv_heads`` to
    ``num_heads``. Random weights have no end of sequence: generation always
    runs to ``max_new_tokens`` (the generation config names no EOS).

    ``special_tokens=True`` keeps ``LlamaConfig``'s BOS 1 and EOS 2 in the
    config and gives ``generate`` the pad id 0; ``False`` names no special
    token at all, so every id is an ordinary token (the streaming and MQTT
    tests' models, whose vocabulary is a tokenizer's). Neither changes the
    weights.

    ``stable_greedy=True`` makes the model's greedy choice robust to
    bfloat16 rounding, for benchmarks whose reference is the target's own
    greedy output. The output projection becomes a row permutation of the
    input embedding (a fixed permutation drawn from ``seed``), and every
    layer's output projections (attention ``o_proj``, MLP ``down_proj``) are
    scaled by 0.01. The residual stream then stays close to the input token's
    embedding at any depth, and the model walks the permutation: after token
    ``t`` it predicts the ``j`` with ``perm[j] == t``, by a margin far above
    rounding. The sequence is not constant, so exactness checks still see
    positions. Compute and timings are unchanged.

    Without it, a random model's top logits are so close that in bfloat16 a
    forward over k + 1 positions and ``generate``'s one-position steps pick
    different tokens, and a greedy reference stops being the target's choice
    within a few tokens (see ``benchmarks/gpu_sweep.py``).
    """
    tokens: dict[str, Any] = (
        {} if special_tokens else {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    )
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        **tokens,
    )
    model = random_model(config, seed=seed, dtype=dtype, device=device, model_class=model_class or LlamaForCausalLM)
    if stable_greedy:
        permutation = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(seed))
        embedding = model.get_input_embeddings().weight
        assert isinstance(embedding, torch.Tensor)
        with torch.no_grad():
            model.get_output_embeddings().weight.copy_(embedding[permutation.to(embedding.device)])
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.mul_(0.01)
                layer.mlp.down_proj.weight.mul_(0.01)
    model.generation_config.eos_token_id = None
    if special_tokens:
        model.generation_config.pad_token_id = 0
    return model


def build_cost_draft(
    target: PreTrainedModel, *, hidden: int, layers: int, intermediate: int, seed: int = 0
) -> PreTrainedModel:
    """A random Llama-shaped oracle draft model sharing the target's vocabulary, device and dtype."""
    param = next(target.parameters())
    return random_llama(
        vocab_size=int(target.get_output_embeddings().weight.shape[0]),
        hidden_size=hidden,
        num_layers=layers,
        intermediate_size=intermediate,
        num_heads=max(1, hidden // 32),
        dtype=param.dtype,
        device=param.device,
        seed=seed,
        model_class=oracle_model_class(LlamaForCausalLM),
    )


def byte_level_bpe(corpus: Sequence[str], vocab_size: int, *, eos_token: str = "<eos>") -> PreTrainedTokenizerFast:
    """A GPT-2 style byte-level BPE trained offline on ``corpus``; ``eos_token`` is its one special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[eos_token],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos_token, clean_up_tokenization_spaces=False)
