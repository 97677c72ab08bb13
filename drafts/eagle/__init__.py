"""EAGLE-style drafting in the target's hidden-state space: the head, its loaders and the drafter."""

from .drafter import EagleDrafter
from .formats import (
    FORMATS,
    HeadFormatError,
    HeadMismatchError,
    detect_format,
    is_head_folder,
    load_head,
    save_speculators,
)
from .head import EagleHead, EagleHeadConfig, HeadKV

__all__ = [
    "FORMATS",
    "EagleDrafter",
    "EagleHead",
    "EagleHeadConfig",
    "HeadFormatError",
    "HeadKV",
    "HeadMismatchError",
    "detect_format",
    "is_head_folder",
    "load_head",
    "save_speculators",
]
