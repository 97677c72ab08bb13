"""Validated generation settings, merged from keyword arguments and a GenerationConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import GenerationConfig

from .errors import InvalidArgumentError
from .policy import is_policy

__all__ = ["GenerationParams", "UNSET", "resolve_params"]


class _Unset:
    def __repr__(self) -> str:  # shows up in signatures
        return "<default>"


UNSET: Any = _Unset()

# Keyword argument -> default when neither the caller nor a GenerationConfig sets it.
_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 64,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": None,
    "top_p": None,
    "eos_token_id": None,
}

# GenerationConfig fields that change decoding in ways this engine does not implement.
_UNSUPPORTED_CONFIG = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "penalty_alpha": None,
    "num_beam_groups": 1,
}


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float | None
    eos_token_ids: frozenset[int]
    #: An int, "auto" (chosen per step), None (the drafter's default) or a DraftLengthPolicy object.
    num_draft_tokens: Any
    seed: int | None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InvalidArgumentError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        k = self.num_draft_tokens
        bad_int = isinstance(k, bool) or not isinstance(k, int) or k < 1
        if k is not None and k != "auto" and not is_policy(k) and bad_int:
            raise InvalidArgumentError(
                "num_draft_tokens must be an integer >= 1, 'auto', None (the drafter's default) "
                f"or a DraftLengthPolicy, got {k!r}"
            )
        if not isinstance(self.do_sample, bool):
            raise InvalidArgumentError(f"do_sample must be True or False, got {self.do_sample!r}")
        if self.do_sample:
            if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
                raise InvalidArgumentError(
                    f"temperature must be > 0 when sampling, got {self.temperature!r}; use do_sample=False for greedy"
                )
            if self.top_k is not None and (
                isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0
            ):
                raise InvalidArgumentError(f"top_k must be a non-negative integer or None, got {self.top_k!r}")
            if self.top_p is not None and (not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0):
                raise InvalidArgumentError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise InvalidArgumentError(f"seed must be a non-negative integer or None, got {self.seed!r}")


def _eos_set(value: Any) -> frozenset[int]:
    if value is None:
        return frozenset()
    if isinstance(value, int) and not isinstance(value, bool):
        values = [value]
    elif isinstance(value, (list, tuple, set, frozenset)):
        values = list(value)
    elif hasattr(value, "tolist"):
        values = value.reshape(-1).tolist()
    else:
        raise InvalidArgumentError(f"eos_token_id must be an int or a list of ints, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise InvalidArgumentError(f"eos_token_id must hold non-negative integers, got {value!r}")
    return frozenset(values)


def resolve_params(
    *,
    generation_config: GenerationConfig | None,
    model_generation_config: GenerationConfig | None,
    num_draft_tokens: int | str | None,
    seed: int | None,
    **explicit: Any,
) -> GenerationParams:
    """Merge settings: explicit keyword arguments win over ``generation_config``,
    which wins over the defaults. ``eos_token_id`` falls back to the model's
    own ``generation_config``, as in Hugging Face ``generate``."""
    values = dict(_DEFAULTS)
    if generation_config is not None:
        if not isinstance(generation_config, GenerationConfig):
            raise InvalidArgumentError(
                f"generation_config must be a transformers.GenerationConfig, got {type(generation_config).__name__}"
            )
        for name, neutral in _UNSUPPORTED_CONFIG.items():
            if getattr(generation_config, name, neutral) not in (neutral, None):
                raise InvalidArgumentError(
                    f"generation_config.{name}={getattr(generation_config, name)!r} is not supported by "
                    "speculative decoding; leave it at its default"
                )
        for name in _DEFAULTS:
            config_value = getattr(generation_config, name, None)
            if config_value is not None:
                values[name] = config_value
    for name, value in explicit.items():
        if value is not UNSET:
            values[name] = value
    eos = values.pop("eos_token_id")
    if eos is None and model_generation_config is not None:
        eos = model_generation_config.eos_token_id
    if isinstance(num_draft_tokens, str) and num_draft_tokens != "auto":
        raise InvalidArgumentError(
            f"num_draft_tokens must be an integer >= 1, 'auto' or None, got {num_draft_tokens!r}"
        )
    return GenerationParams(
        max_new_tokens=values["max_new_tokens"],
        do_sample=values["do_sample"],
        temperature=values["temperature"],
        top_k=values["top_k"] if values["top_k"] != 0 else None,
        top_p=values["top_p"],
        eos_token_ids=_eos_set(eos),
        num_draft_tokens=num_draft_tokens,
        seed=seed,
    )
