"""Drafters: things that guess the target's next tokens, each implementing specdec.Drafter."""

from .model import ModelDrafter
from .ngram import NGramDrafter
from .oracle import OracleDrafter, oracle_token

__all__ = ["ModelDrafter", "NGramDrafter", "OracleDrafter", "oracle_token"]
