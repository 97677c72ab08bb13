"""specdec: lossless speculative decoding for Hugging Face causal language models.

The core package: data types, the :class:`Drafter` protocol, the verification
math, KV-cache rollback and the generation loop. It imports neither ``drafts``
nor ``streaming``.
"""

from .adaptive import AdaptiveDraftLength, CostProfile
from .cache import CausalLMAdapter, check_rollback_support
from .drafter import DraftContext, Drafter
from .errors import (
    DrafterContractError,
    InvalidArgumentError,
    ModelLoadError,
    SpecDecError,
    UnsupportedModelError,
    VocabularyMismatchError,
)
from .generator import SpeculativeGenerator, TokenSink
from .logits import LogitsShaper
from .policy import DraftLengthPolicy, FixedDraftLength
from .types import DraftBlock, FinishReason, SpecOutput, SpecStats, VerifiedBlock, VerifyResult
from .verify import greedy_verify, speculative_sample

__version__ = "0.1.0"

__all__ = [
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
    "speculative_sample",
    "__version__",
]
