"""Logits processors that a GenerationConfig asks for, built from transformers' public classes.

Hugging Face ``generate`` applies the processors named by the effective
generation config (the model's own ``generation_config`` unless the caller
passes one): repetition penalty, banned n-grams, minimum lengths and so on.
To stay token-identical to ``generate``, the speculative loop applies the same
ones, in the same order, before the caller's own ``logits_processor`` list.
Settings this engine cannot reproduce exactly are refused with a clear error
rather than silently ignored.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    GenerationConfig,
    InfNanRemoveLogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TypicalLogitsWarper,
)

from .errors import InvalidArgumentError

__all__ = ["config_processors", "config_sampling_warpers"]

# Settings whose effect depends on machinery outside one sequence's logits.
_REFUSED = {
    "guidance_scale": lambda v: v is not None and v != 1,
    "forced_bos_token_id": lambda v: v is not None,
    "forced_eos_token_id": lambda v: v is not None,
    "exponential_decay_length_penalty": lambda v: v is not None,
    "watermarking_config": lambda v: v is not None,
    "encoder_repetition_penalty": lambda v: v is not None and v != 1.0,
    "encoder_no_repeat_ngram_size": lambda v: v is not None and v > 0,
    "top_h": lambda v: v is not None,
}


def config_processors(
    config: GenerationConfig, *, prompt_length: int, eos_token_ids: frozenset[int], device: torch.device
) -> LogitsProcessorList:
    """The processors ``generate`` would build from ``config`` before any warper (greedy and sampling)."""
    for name, refused in _REFUSED.items():
        value = getattr(config, name, None)
        if refused(value):
            raise InvalidArgumentError(
                f"generation_config.{name}={value!r} is not supported by speculative decoding; "
                "set it to None (or pass a generation_config without it)"
            )
    processors = LogitsProcessorList()
    if config.sequence_bias is not None:
        processors.append(SequenceBiasLogitsProcessor(sequence_bias=config.sequence_bias))
    if config.repetition_penalty is not None and config.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=config.repetition_penalty))
    if config.no_repeat_ngram_size is not None and config.no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.bad_words_ids is not None:
        processors.append(NoBadWordsLogitsProcessor(config.bad_words_ids, sorted(eos_token_ids) or None))
    hf_dev: Any = device  # transformers annotates these processors' device as str; they take a torch.device
    eos = torch.tensor(sorted(eos_token_ids), device=device) if eos_token_ids else None
    if eos is not None and config.min_length is not None and config.min_length > 0:
        processors.append(MinLengthLogitsProcessor(config.min_length, eos, device=hf_dev))
    if eos is not None and config.min_new_tokens is not None and config.min_new_tokens > 0:
        processors.append(MinNewTokensLengthLogitsProcessor(prompt_length, config.min_new_tokens, eos, device=hf_dev))
    if config.remove_invalid_values is True:
        processors.append(InfNanRemoveLogitsProcessor())
    if config.suppress_tokens is not None:
        processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device=hf_dev))
    if config.begin_suppress_tokens is not None:
        processors.append(
            SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, prompt_length, device=hf_dev)
        )
    return processors


def config_sampling_warpers(config: GenerationConfig, *, device: torch.device) -> LogitsProcessorList:
    """Warpers beyond temperature/top-k/top-p that ``generate`` applies when sampling, after top-p."""
    warpers = LogitsProcessorList()
    if config.min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=config.min_p))
    if config.typical_p is not None and config.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(mass=config.typical_p))
    if config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0:
        warpers.append(EpsilonLogitsWarper(epsilon=config.epsilon_cutoff))
    if config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0:
        hf_dev: Any = device  # transformers annotates device as str; it takes a torch.device
        warpers.append(EtaLogitsWarper(epsilon=config.eta_cutoff, device=hf_dev))
    return warpers
