"""Where verified blocks go: the caller's sink, its draft hook, and a transformers streamer.

The loop emits through one :class:`BlockEmitter` per sequence and never asks
what is behind it. :func:`resolve_sink` accepts what ``generate`` has always
accepted (a callable ``on_tokens(step, token_ids)``, or an object with
``on_block(VerifiedBlock)`` or ``on_tokens`` and optionally ``on_draft``);
:class:`StreamerSink` drives a transformers ``BaseStreamer`` (``put`` the
prompt, ``put`` each block, ``end()`` once, also when generation fails).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import InvalidArgumentError
from .types import VerifiedBlock

__all__ = ["BlockEmitter", "StreamerSink", "resolve_sink"]

TokenCallback = Callable[[int, list[int]], Any]
BlockCallback = Callable[[VerifiedBlock], Any]


def resolve_sink(on_tokens: Any) -> tuple[BlockCallback | None, TokenCallback | None]:
    """The sink as one callable taking a :class:`VerifiedBlock`, and its ``on_draft`` if it has one."""
    if on_tokens is None:
        return None, None
    on_draft = getattr(on_tokens, "on_draft", None)
    if callable(getattr(on_tokens, "on_block", None)):
        return on_tokens.on_block, on_draft
    legacy = on_tokens.on_tokens if hasattr(on_tokens, "on_tokens") else on_tokens
    if not callable(legacy):
        raise InvalidArgumentError(
            "on_tokens must be a callable(step, token_ids) or an object with an on_block or on_tokens method"
        )
    return (lambda block: legacy(block.step, list(block.token_ids))), on_draft


class StreamerSink:
    """Drives a transformers ``BaseStreamer`` from verified blocks."""

    def __init__(self, streamer: Any) -> None:
        if not callable(getattr(streamer, "put", None)) or not callable(getattr(streamer, "end", None)):
            raise InvalidArgumentError("streamer must be a transformers BaseStreamer (with put and end)")
        self.streamer = streamer
        self.ended = False

    def start(self, prompt_ids: torch.Tensor) -> None:
        self.streamer.put(prompt_ids.reshape(1, -1).cpu())

    def on_block(self, block: VerifiedBlock) -> None:
        self.streamer.put(torch.tensor(block.token_ids, dtype=torch.long))

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.streamer.end()


class BlockEmitter:
    """Fans one sequence's drafts and verified blocks out to its sinks.

    ``close()`` ends the streamer exactly once, whether the sequence finished
    or failed; call it from a ``finally``.
    """

    def __init__(
        self,
        on_block: BlockCallback | None = None,
        on_draft: TokenCallback | None = None,
        streamer: Any = None,
    ) -> None:
        self.on_block = on_block
        self.on_draft = on_draft
        self.streamer = StreamerSink(streamer) if streamer is not None else None
        self.listeners: list[BlockCallback] = []

    def listen(self, callback: BlockCallback) -> None:
        """Also call ``callback(block)`` for every verified block (after the sink and the streamer)."""
        self.listeners.append(callback)

    @classmethod
    def for_generate(cls, on_tokens: Any, on_draft: TokenCallback | None, streamer: Any) -> BlockEmitter:
        on_block, sink_draft = resolve_sink(on_tokens)
        return cls(on_block, on_draft or sink_draft, streamer)

    def start(self, prompt_ids: torch.Tensor) -> None:
        if self.streamer is not None:
            self.streamer.start(prompt_ids)

    def draft(self, step: int, token_ids: list[int]) -> None:
        if self.on_draft is not None and token_ids:
            self.on_draft(step, token_ids)

    def block(self, block: VerifiedBlock) -> None:
        if self.on_block is not None:
            self.on_block(block)
        if self.streamer is not None:
            self.streamer.on_block(block)
        for listener in self.listeners:
            listener(block)

    def close(self) -> None:
        if self.streamer is not None:
            self.streamer.end()
