"""specdec: lossless speculative decoding for Hugging Face causal language models.

The core package: data types, the :class:`Drafter` protocol, the verification
math, KV-cache rollback and the generation loop. It imports neither ``drafts``
nor ``streaming``.
"""

from .cache import CausalLMAdapter, check_rollback_support
from .drafter import DraftContext, Drafter, HiddenStateDrafter
from .errors import (
    InvalidArgumentError,
    ModelLoadError,
    SpecDecError,
    UnsupportedModelError,
    VocabularyMismatchError,
)
from .generator import SpeculativeGenerator, TokenSink
from .logits import LogitsShaper
from .oracle import oracle_token
from .types import DraftBlock, FinishReason, SpecOutput, SpecStats, VerifiedBlock, VerifyResult
from .verify import greedy_verify, speculative_sample

__version__ = "0.1.0"

__all__ = [
    "CausalLMAdapter",
    "DraftBlock",
    "DraftContext",
    "Drafter",
    "FinishReason",
    "HiddenStateDrafter",
    "InvalidArgumentError",
    "LogitsShaper",
    "ModelLoadError",
    "SpecDecError",
    "SpecOutput",
    "SpecStats",
    "SpeculativeGenerator",
    "TokenSink",
    "UnsupportedModelError",
    "VerifiedBlock",
    "VerifyResult",
    "VocabularyMismatchError",
    "check_rollback_support",
    "greedy_verify",
    "oracle_token",
    "speculative_sample",
    "__version__",
]
