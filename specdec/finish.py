"""Why a generation stopped: a torch-free module, so light importers (the MQTT client) can name it."""

from __future__ import annotations

from typing import Literal

__all__ = ["FinishReason"]

FinishReason = Literal["eos", "length", "stop", "cancelled"]
