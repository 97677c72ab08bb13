"""The emitter: turns the core's sink calls into stream events, on the generation thread.

``on_block(VerifiedBlock)`` becomes a ``commit`` (its text from the incremental
detokenizer), ``on_draft`` a ``provisional`` (when asked for), and
:meth:`Emitter.finish` a text-only ``commit`` if the detokenizer owes text,
then ``error`` (when generation raised) and ``end``. Each event goes to the
``post`` callback it was made with (the stream's thread-safe outbox); the
emitter knows nothing of the loop, the log or the subscribers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from specdec import SpecOutput, VerifiedBlock

from .detok import make_detokenizer
from .events import CommitEvent, EndEvent, ErrorEvent, Event, FinishReason, ProvisionalEvent, Usage

__all__ = ["Emitter", "Finish"]


class Finish:
    """The outbox's last item: what generate returned or raised."""

    __slots__ = ("output", "exc")

    def __init__(self, output: SpecOutput | None, exc: BaseException | None) -> None:
        self.output = output
        self.exc = exc


class Emitter:
    """The generator's sink (runs on the generation thread): numbers and detokenizes events, hands them to ``post``.

    The core calls ``on_block(VerifiedBlock)`` once per verified block and
    ``on_draft(step, token_ids)`` before verifying a draft; :meth:`finish` posts
    the closing events and then a :class:`Finish` record.
    """

    def __init__(
        self, stream_id: str, tokenizer: Any, provisional: bool, post: Callable[[Event | Finish], None]
    ) -> None:
        self._post = post
        self._stream_id = stream_id
        self._detok = make_detokenizer(tokenizer)
        self._provisional = provisional
        self.seq = 1  # seq 0 is the start event, published by StreamHub.start
        self.n_committed = 0
        self.drafted = 0
        self.accepted = 0
        self.texts: list[str] = []
        self.last_step = 0

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    def on_draft(self, step: int, token_ids: list[int]) -> None:
        if self._provisional:
            self._post(
                ProvisionalEvent(
                    stream_id=self._stream_id,
                    seq=self._next_seq(),
                    base=self.n_committed,
                    token_ids=list(token_ids),
                    text=self._detok.peek(token_ids),
                )
            )

    def on_block(self, block: VerifiedBlock) -> None:
        token_ids = list(block.token_ids)
        step, drafted, accepted = block.step, block.drafted, block.accepted
        text = self._detok.step(token_ids)
        self.n_committed += len(token_ids)
        self.drafted += drafted
        self.accepted += accepted
        self.last_step = step
        self.texts.append(text)
        self._post(
            CommitEvent(
                stream_id=self._stream_id,
                seq=self._next_seq(),
                token_ids=token_ids,
                text=text,
                n_committed=self.n_committed,
                step=step,
                drafted=drafted,
                accepted=accepted,
            )
        )

    def finish(self, output: SpecOutput | None, exc: BaseException | None, prompt_tokens: int) -> None:
        """Publish the closing events: a text-only commit if the detokenizer owes text, [error], end."""
        try:
            tail = self._detok.flush()
        except Exception as flush_exc:  # never let a detokenizer bug hide the real outcome
            tail = ""
            if exc is None:
                exc = flush_exc
        if tail:
            self.texts.append(tail)
            self._post(
                CommitEvent(
                    stream_id=self._stream_id,
                    seq=self._next_seq(),
                    token_ids=[],
                    text=tail,
                    n_committed=self.n_committed,
                    step=self.last_step,
                    drafted=0,
                    accepted=0,
                )
            )
        if exc is not None:
            self._post(
                ErrorEvent(
                    stream_id=self._stream_id,
                    seq=self._next_seq(),
                    code="bad_request" if isinstance(exc, ValueError) else "internal",
                    message=f"{type(exc).__name__}: {exc}",
                    retryable=False,
                )
            )
            finish_reason: FinishReason = "error"
            usage = Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=self.n_committed,
                drafted=self.drafted,
                accepted=self.accepted,
            )
        else:
            assert output is not None
            stats = output.stats
            finish_reason = output.finish_reason
            usage = Usage(
                prompt_tokens=stats.prompt_tokens or prompt_tokens,
                completion_tokens=self.n_committed,
                drafted=stats.drafted,
                accepted=stats.accepted,
            )
        self._post(
            EndEvent(
                stream_id=self._stream_id,
                seq=self._next_seq(),
                finish_reason=finish_reason,
                usage=usage,
                text="".join(self.texts),
            )
        )
        self._post(Finish(output, exc))
