"""The project's error hierarchy.

Every error raised on purpose by specdec derives from :class:`SpecDecError`.
Errors caused by bad arguments also derive from :class:`ValueError`, so code
that already catches ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "SpecDecError",
    "InvalidArgumentError",
    "UnsupportedModelError",
    "VocabularyMismatchError",
    "ModelLoadError",
    "DrafterContractError",
]


class SpecDecError(Exception):
    """Root of every error specdec raises on purpose."""


class InvalidArgumentError(SpecDecError, ValueError):
    """An argument is out of range or of the wrong kind; the message says what to change."""


class UnsupportedModelError(InvalidArgumentError):
    """The model (or its KV cache) cannot be used for speculative decoding."""


class VocabularyMismatchError(InvalidArgumentError):
    """Target and drafter do not share a vocabulary."""


class ModelLoadError(SpecDecError):
    """A model or tokenizer could not be fetched or loaded."""


class DrafterContractError(SpecDecError, RuntimeError):
    """A drafter broke the :class:`~specdec.Drafter` contract (for example, proposed more tokens than asked)."""
