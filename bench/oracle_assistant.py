"""The controlled-acceptance oracle for Hugging Face assisted generation.

HF ``generate(assistant_model=...)`` drives a real model. To give it the same
oracle as :class:`specdec.drafts.OracleDrafter`, :func:`oracle_model_class` derives a
subclass of any HF causal LM class whose forward runs the real network (so it
costs what the draft model costs) and then rewrites the last position's logits
so that the reference token is on top with probability ``alpha`` and a random
wrong token is on top otherwise. Both systems thus pay the same draft cost and
see the same acceptance rate.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedModel

from specdec.drafts import oracle_token

__all__ = ["oracle_model_class", "configure_oracle", "configure_assistant"]

_CLASSES: dict[type[PreTrainedModel], type[PreTrainedModel]] = {}


def oracle_model_class(base: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """A subclass of the HF causal LM class ``base`` whose logits follow an oracle (off until configured)."""
    if not (isinstance(base, type) and issubclass(base, PreTrainedModel) and issubclass(base, GenerationMixin)):
        raise TypeError(
            f"oracle_model_class needs an HF causal LM class (a PreTrainedModel that generates), got {base!r}"
        )
    if base in _CLASSES:
        return _CLASSES[base]

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs: Any):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        outputs = base.forward(self, input_ids=input_ids, **kwargs)
        oracle = getattr(self, "_oracle", None)
        if oracle is not None and input_ids is not None:
            reference, alpha, seed = oracle
            # Index of the token this forward predicts. Inside ``generate`` count from the length of the
            # sequence it was given: HF assisted generation may re-feed a prefix whose cache it cropped,
            # so the cache length alone is not the position.
            position = self._oracle_next if self._oracle_next is not None else past + int(input_ids.shape[1])
            if self._oracle_next is not None:
                self._oracle_next += 1
            vocab = outputs.logits.shape[-1]
            token = oracle_token(reference, position, alpha, seed, vocab)
            self.oracle_proposed += 1
            last = outputs.logits[:, -1, :]
            last.fill_(-1e4)
            last[:, token] = 1e4
        return outputs

    def generate(self, *args: Any, **kwargs: Any):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._oracle_next = int(ids.shape[-1]) if isinstance(ids, torch.Tensor) else None
        try:
            return base.generate(self, *args, **kwargs)
        finally:
            self._oracle_next = None

    # Same signature as the base forward: callers inspect it (cache and logits_to_keep arguments).
    forward.__signature__ = inspect.signature(base.forward)  # type: ignore[attr-defined]
    forward.__doc__ = base.forward.__doc__
    cls = type(f"Oracle{base.__name__}", (base,), {"forward": forward, "generate": generate, "_oracle_next": None})
    _CLASSES[base] = cls
    return cls


def configure_oracle(model: Any, reference_ids: list[int] | None, alpha: float = 1.0, seed: int = 0) -> None:
    """Point an oracle model at a reference (prompt + continuation), or turn the oracle off with ``None``.

    ``model``: an instance of a class from :func:`oracle_model_class` (typed ``Any``: the oracle's
    attributes are set on the instance, which an ``nn.Module`` type does not declare).
    """
    model._oracle = None if reference_ids is None else (list(reference_ids), float(alpha), seed)
    model.oracle_proposed = 0


def configure_assistant(model: PreTrainedModel, num_draft_tokens: int) -> None:
    """HF assisted generation with exactly ``num_draft_tokens`` per round: constant schedule, no early stop."""
    config = model.generation_config
    config.num_assistant_tokens = num_draft_tokens
    config.num_assistant_tokens_schedule = "constant"
    config.assistant_confidence_threshold = 0.0
