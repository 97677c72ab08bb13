"""OpenAI response and chunk objects built from :class:`~specdec.streaming.http.service.Piece`\\ s.

Shapes follow OpenAI's ``text_completion`` / ``chat.completion`` objects and
their streamed chunks. Our extensions ride in fields OpenAI does not define,
which clients ignore: ``usage.specdec`` (drafted, accepted, acceptance rate,
steps, tokens per step) and, only with ``stream_options.include_drafts``, a
``specdec`` object on each chunk: ``{"type": "commit", "step", "drafted",
"accepted", "n_committed"}`` on content chunks, ``{"type": "draft", "text",
"token_ids"}`` on draft chunks (empty ``choices[0]`` text / delta; the draft
text follows the content so far and replaces any earlier draft; the next
content chunk retires it).
"""

from __future__ import annotations

import time
from typing import Any

from .protocol import CompletionRequest
from .service import Piece

__all__ = ["ChunkMaker"]


class ChunkMaker:
    """Builds the JSON objects of one request's response (streamed or not)."""

    def __init__(self, request: CompletionRequest, stream_id: str, model: str) -> None:
        self.request = request
        self.chat = request.chat
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + stream_id
        self.created = int(time.time())
        self.model = model
        self._role_sent = False

    def _envelope(self, choices: list[dict[str, Any]], *, chunk: bool) -> dict[str, Any]:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def _choice(self, text: str | None, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if not self._role_sent:
                delta["role"] = "assistant"
                self._role_sent = True
            if text is not None:
                delta["content"] = text
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}

    def chunk(self, piece: Piece) -> dict[str, Any] | None:
        """The chunk for a ``content`` or ``draft`` piece (``None``: nothing to send)."""
        drafts = self.request.include_drafts
        if piece.kind == "content":
            if not piece.text and not drafts:
                return None  # e.g. text held back at a possible stop string
            out = self._envelope([self._choice(piece.text, None)], chunk=True)
            if drafts and piece.commit is not None:
                out["specdec"] = {"type": "commit", **piece.commit}
        elif piece.kind == "draft" and drafts:
            out = self._envelope([self._choice(None if self.chat else "", None)], chunk=True)
            out["specdec"] = {"type": "draft", "text": piece.text, "token_ids": piece.token_ids}
        else:
            return None
        if self.request.include_usage:
            out["usage"] = None
        return out

    def final_chunk(self, finish_reason: str) -> dict[str, Any]:
        """The chunk that carries ``finish_reason`` (empty text / delta)."""
        choice = self._choice(None if self.chat else "", finish_reason)
        out = self._envelope([choice], chunk=True)
        if self.request.include_usage:
            out["usage"] = None
        return out

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The last chunk with ``stream_options.include_usage``: no choices, the usage."""
        out = self._envelope([], chunk=True)
        out["usage"] = usage
        return out

    def response(self, text: str, finish_reason: str, usage: dict[str, Any]) -> dict[str, Any]:
        """The whole (non-streamed) response."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}  # fmt: skip
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        out = self._envelope([choice], chunk=False)
        out["usage"] = usage
        return out
