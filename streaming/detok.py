"""Incremental detokenization: token ids in, text deltas out.

The contract: for any split of ``ids`` into chunks,
``"".join(d.step(chunk) for chunk in chunks) + d.flush()`` equals
``tokenizer.decode(ids, skip_special_tokens=True)``.

Two strategies, chosen once per tokenizer by :func:`make_detokenizer`:

- :class:`DecodeStreamDetokenizer` uses the ``tokenizers`` library's own
  streaming decoder (``tokenizers.decoders.DecodeStream``) when the tokenizer is
  backed by a ``tokenizers.Tokenizer`` and its ``decode`` adds no Python-side
  post-processing (``clean_up_tokenization_spaces``).
- :class:`OffsetDetokenizer` is the fallback for any tokenizer with a
  ``decode(ids, skip_special_tokens=True)`` method: it re-decodes a short window
  of recent tokens (``prefix_offset`` .. end) and emits what the newest tokens
  add to the window's text (the method of TGI and vLLM).

Both hold back text while it ends in an incomplete UTF-8 sequence (decoded as
U+FFFD), so a character split across byte-level tokens is emitted whole, once
its last byte arrives. SentencePiece-style leading spaces (``▁``) come out
right because the decoded window always starts at the same token for the two
texts being compared. :meth:`flush` settles the tail at the end of the stream
against a full ``decode``.

Example::

    detok = make_detokenizer(tokenizer)
    for block in blocks:          # e.g. each verified block of a step
        print(detok.step(block), end="")
    print(detok.flush())
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["Detokenizer", "DecodeStreamDetokenizer", "OffsetDetokenizer", "NullDetokenizer", "make_detokenizer"]

logger = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"


class Detokenizer(Protocol):
    """Turns blocks of token ids into text deltas; see the module docstring for the contract."""

    def step(self, token_ids: Sequence[int]) -> str: ...

    def peek(self, token_ids: Sequence[int]) -> str: ...

    def flush(self) -> str: ...


def _decode_fn(tokenizer: Any):
    decode = getattr(tokenizer, "decode", None)
    if not callable(decode):
        raise TypeError(f"tokenizer {type(tokenizer).__name__} has no decode method")
    return lambda ids: decode(list(ids), skip_special_tokens=True)


class _Base:
    """Shared bookkeeping: every id seen, the text emitted so far, and the final reconciliation."""

    def __init__(self, tokenizer: Any) -> None:
        self._decode = _decode_fn(tokenizer)
        self._byte_ids = _byte_fallback_ids(tokenizer)
        self._ids: list[int] = []
        self._emitted: list[str] = []
        self._emitted_len = 0

    def _settled(self) -> bool:
        """False while the newest token is a byte-fallback token (``<0xE6>``) or a skipped special
        token: the decoder turns a whole run of byte tokens into U+FFFD when the run is not valid
        UTF-8, so a later byte can change the text of earlier ones; such a run is decoded only once
        a normal token ends it."""
        return not (self._byte_ids and self._ids and self._ids[-1] in self._byte_ids)

    def _emit(self, text: str) -> str:
        if text:
            self._emitted.append(text)
            self._emitted_len += len(text)
        return text

    def flush(self) -> str:
        """The text still owed at the end of the stream (usually ""), checked against a full decode."""
        full = self._decode(self._ids)
        emitted = "".join(self._emitted)
        if full.startswith(emitted):
            return self._emit(full[len(emitted) :])
        # Cannot happen for the decoders tested here; never silently lose text.
        logger.warning("incremental detokenization diverged from decode(); the stream's text may differ")
        return ""

    def peek(self, token_ids: Sequence[int]) -> str:
        """The text ``token_ids`` would add after everything emitted so far, without consuming them.

        Used for provisional (draft) text; it may be imperfect at character
        boundaries and is never part of the committed text.
        """
        if not token_ids:
            return ""
        start = max(0, len(self._ids) - 8)
        # Held-back committed text (an incomplete character) ends in U+FFFD: compare without it.
        base = self._decode(self._ids[start:]).rstrip(_REPLACEMENT)
        text = self._decode(self._ids[start:] + [int(t) for t in token_ids])
        if not text.startswith(base):
            return ""
        return text[len(base) :].rstrip(_REPLACEMENT)


class DecodeStreamDetokenizer(_Base):
    """Streaming decode with ``tokenizers.decoders.DecodeStream`` (Rust, O(1) per token)."""

    def __init__(self, tokenizer: Any, backend: Any) -> None:
        super().__init__(tokenizer)
        from tokenizers.decoders import DecodeStream

        self._backend = backend
        self._stream: Any = DecodeStream(skip_special_tokens=True)
        self._pending: list[int] = []

    def step(self, token_ids: Sequence[int]) -> str:
        ids = [int(t) for t in token_ids]
        self._ids.extend(ids)
        if self._stream is None:
            return self._step_full()
        if self._byte_ids:
            # Feed a run of byte-fallback tokens together with the normal token that ends it.
            self._pending.extend(ids)
            if not self._settled():
                return ""
            feed: list[Any] = [self._pending]
            self._pending = []
        else:
            feed = list(ids)
        out: list[str] = []
        for token in feed:
            try:
                chunk = self._stream.step(self._backend, token)
            except Exception:
                # DecodeStream refuses some byte sequences that are not valid UTF-8 ("Invalid prefix");
                # carry on by re-decoding everything, which is always right (and O(n) per step).
                logger.debug("DecodeStream failed; switching to full re-decode", exc_info=True)
                self._stream = None
                self._emit("".join(out))
                return "".join(out) + self._step_full()
            if chunk:
                out.append(chunk)
        return self._emit("".join(out))

    def _step_full(self) -> str:
        if not self._settled():
            return ""
        full = self._decode(self._ids)
        if full.endswith(_REPLACEMENT) or len(full) <= self._emitted_len:
            return ""
        emitted = "".join(self._emitted)
        if not full.startswith(emitted):
            return ""
        return self._emit(full[len(emitted) :])


class OffsetDetokenizer(_Base):
    """Offset-based incremental decode for any tokenizer with ``decode``.

    ``prefix_offset`` .. ``read_offset`` is the window of already-emitted tokens
    used as context; tokens after ``read_offset`` are not emitted yet.
    """

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self._prefix_offset = 0
        self._read_offset = 0

    def step(self, token_ids: Sequence[int]) -> str:
        self._ids.extend(int(t) for t in token_ids)
        if not self._settled():
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if (
            len(new_text) > len(prefix_text)
            and not new_text.endswith(_REPLACEMENT)
            and new_text.startswith(prefix_text)
        ):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return self._emit(new_text[len(prefix_text) :])
        return ""


class NullDetokenizer:
    """For streams without a tokenizer: every text is ""."""

    def step(self, token_ids: Sequence[int]) -> str:
        return ""

    def peek(self, token_ids: Sequence[int]) -> str:
        return ""

    def flush(self) -> str:
        return ""


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _byte_fallback_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of SentencePiece byte-fallback tokens (``<0x00>`` .. ``<0xFF>``), if the vocabulary has them."""
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if not callable(get_vocab):
        return frozenset()
    try:
        vocab = get_vocab()
    except Exception:  # a tokenizer without a usable vocabulary: no byte tokens known
        return frozenset()
    byte_ids = {i for token, i in vocab.items() if len(token) == 6 and _BYTE_TOKEN.fullmatch(token)}
    if not byte_ids:
        return frozenset()
    # A skipped special token between two byte runs joins them, so it does not end a run either.
    special = getattr(tokenizer, "all_special_ids", None) or []
    return frozenset(byte_ids | {int(i) for i in special})


def _backend_of(tokenizer: Any) -> Any | None:
    """The ``tokenizers.Tokenizer`` behind ``tokenizer`` when DecodeStream gives exactly its ``decode``."""
    try:
        from tokenizers import Tokenizer
        from tokenizers.decoders import DecodeStream  # noqa: F401  (absent in old tokenizers)
    except ImportError:
        return None
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        return None
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        # transformers skips the clean-up for BPE models unless forced; otherwise decode() post-processes.
        is_bpe = type(backend.model).__name__ == "BPE"
        forced = getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
        if not is_bpe or forced:
            return None
    return backend


def make_detokenizer(tokenizer: Any | None, *, prefer_decode_stream: bool = True) -> Any:
    """The right incremental detokenizer for ``tokenizer`` (``None``: a detokenizer that yields "")."""
    if tokenizer is None:
        return NullDetokenizer()
    backend = _backend_of(tokenizer) if prefer_decode_stream else None
    if backend is not None:
        return DecodeStreamDetokenizer(tokenizer, backend)
    return OffsetDetokenizer(tokenizer)
