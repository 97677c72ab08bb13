"""Drafters: things that guess the target's next tokens, each implementing specdec.Drafter."""

from .composite import Choice, CompositeDrafter, CostChooser, SourceCosts
from .model import ModelDrafter
from .ngram import NGramDrafter
from .oracle import OracleDrafter, oracle_token

__all__ = [
    "Choice",
    "CompositeDrafter",
    "CostChooser",
    "ModelDrafter",
    "NGramDrafter",
    "OracleDrafter",
    "SourceCosts",
    "oracle_token",
]
