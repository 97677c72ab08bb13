"""OpenAI ``stop`` strings, exactly: generation ends at the first stop string, the text is cut before it.

Two halves:

- :class:`StopStringCriteria` runs inside generation (a ``transformers``
  ``StoppingCriteria`` the core checks after every verified token): it
  decodes the completion incrementally with the hub's own detokenizer and
  says "stop" once any stop string occurs in the text, so generation ends at
  the token that completes it, even in the middle of a verified block.
- :class:`StopTextFilter` runs on the event loop over the committed text
  deltas: it holds back the shortest tail that could still become a stop
  string (``"\\n"`` while ``stop=["\\n\\n"]``), and once a stop string is
  found it releases the text up to it and nothing after. What it releases,
  joined, is the completion's text cut before the first stop string, which
  is what OpenAI returns.

Example (stop ``"END"``): deltas ``"ab"``, ``"cE"``, ``"ND more"`` release
``"ab"``, ``"c"`` (``"E"`` held back), ``""`` and the filter reports stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from transformers import StoppingCriteria

from .. import make_detokenizer

__all__ = ["StopStringCriteria", "StopTextFilter"]


class StopStringCriteria(StoppingCriteria):
    """True once the decoded completion (tokens after ``prompt_length``) contains any of ``stops``.

    The core calls it with each growing prefix ``input_ids[:, :end]``; the
    completion text is built incrementally (each token decoded once), and only
    the new text plus the ``max(len(stop)) - 1`` characters before it are
    searched, so a check costs O(1) in the length of the completion.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_length: int) -> None:
        if not stops:
            raise ValueError("StopStringCriteria needs at least one stop string")
        self._tokenizer = tokenizer
        self._stops = tuple(stops)
        self._reach = max(len(s) for s in self._stops) - 1
        self._prompt_length = prompt_length
        self._reset()

    def _reset(self) -> None:
        self._detok = make_detokenizer(self._tokenizer)
        self._consumed = self._prompt_length
        self._text = ""
        self._found = False

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        length = int(input_ids.shape[-1])
        if length < self._consumed:  # a new, shorter sequence: start over
            self._reset()
        if not self._found and length > self._consumed:
            new_ids = input_ids[0, self._consumed : length].tolist()
            self._consumed = length
            start = max(0, len(self._text) - self._reach)
            self._text += self._detok.step(new_ids)
            tail = self._text[start:]
            self._found = any(stop in tail for stop in self._stops)
        found = torch.full((input_ids.shape[0],), self._found, dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, found)


class StopTextFilter:
    """Releases committed text up to (not including) the first stop string; see the module docstring."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._pending = ""  # received but not released: could be the start of a stop string
        self.stopped = False

    def push(self, delta: str) -> str:
        """Take the next committed text delta; return the text that can be released now."""
        if self.stopped or not delta:
            return ""
        if not self._stops:
            return delta
        text = self._pending + delta
        cut = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return text[:cut]
        hold = self._held_tail(text)
        self._pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The end of the stream: release what was held back (no stop string completed it)."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    @property
    def held(self) -> str:
        """The text held back now (shown to a client as part of a draft, never as content)."""
        return self._pending

    def _held_tail(self, text: str) -> int:
        """The length of the longest tail of ``text`` that is a proper prefix of some stop string."""
        longest = min(len(text), max(len(s) for s in self._stops) - 1)
        for size in range(longest, 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
