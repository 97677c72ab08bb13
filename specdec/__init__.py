"""specdec: lossless speculative decoding for Hugging Face causal language models.

The core package: data types, the :class:`Drafter` protocol, the verification
math, KV-cache rollback and the generation loop. It imports neither ``drafts``
nor ``streaming``.
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    DrafterContractError,
    InvalidArgumentError,
    ModelLoadError,
    SpecDecError,
    UnsupportedModelError,
    VocabularyMismatchError,
)

# The public names load on first use (PEP 562), so ``import specdec`` (and the
# CLI's ``--help``) does not pay for torch and transformers.
_LAZY = {
    "AcceptanceEstimate": ".adaptive",
    "AdaptiveDraftLength": ".adaptive",
    "CostProfile": ".adaptive",
    "best_draft_length": ".adaptive",
    "expected_tokens": ".adaptive",
    "DraftLengthPolicy": ".policy",
    "FixedDraftLength": ".policy",
    "CausalLMAdapter": ".cache",
    "check_rollback_support": ".cache",
    "DraftContext": ".drafter",
    "Drafter": ".drafter",
    "HiddenStateDrafter": ".drafter",
    "SpeculativeGenerator": ".generator",
    "StaticConfig": ".static_target",
    "TokenSink": ".generator",
    "LogitsShaper": ".logits",
    "load_model": ".models",
    "DraftBlock": ".types",
    "FinishReason": ".finish",
    "SpecOutput": ".types",
    "SpecStats": ".types",
    "VerifiedBlock": ".types",
    "VerifyResult": ".types",
    "greedy_verify": ".verify",
    "speculative_sample": ".verify",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .adaptive import AcceptanceEstimate, AdaptiveDraftLength, CostProfile, best_draft_length, expected_tokens
    from .cache import CausalLMAdapter, check_rollback_support
    from .drafter import DraftContext, Drafter, HiddenStateDrafter
    from .generator import SpeculativeGenerator, TokenSink
    from .logits import LogitsShaper
    from .models import load_model
    from .policy import DraftLengthPolicy, FixedDraftLength
    from .static_target import StaticConfig
    from .types import DraftBlock, FinishReason, SpecOutput, SpecStats, VerifiedBlock, VerifyResult
    from .verify import greedy_verify, speculative_sample


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'specdec' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AcceptanceEstimate",
    "AdaptiveDraftLength",
    "CausalLMAdapter",
    "CostProfile",
    "DraftBlock",
    "DraftContext",
    "DraftLengthPolicy",
    "Drafter",
    "DrafterContractError",
    "FixedDraftLength",
    "FinishReason",
    "HiddenStateDrafter",
    "InvalidArgumentError",
    "LogitsShaper",
    "ModelLoadError",
    "SpecDecError",
    "SpecOutput",
    "SpecStats",
    "SpeculativeGenerator",
    "StaticConfig",
    "TokenSink",
    "UnsupportedModelError",
    "VerifiedBlock",
    "VerifyResult",
    "VocabularyMismatchError",
    "best_draft_length",
    "check_rollback_support",
    "expected_tokens",
    "greedy_verify",
    "load_model",
    "speculative_sample",
    "__version__",
]
