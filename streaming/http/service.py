"""The engine side of the HTTP front door: admission, tokenization, one run per request.

:class:`Frontend` owns the :class:`~specdec.streaming.StreamHub` the
requests go through, the limits and the metrics. A request's life:
:meth:`Frontend.admit` (429 beyond ``max_open_streams``), :meth:`Frontend.encode`
(tokenize or render the chat template in a worker thread; 413 beyond
``max_prompt_tokens``), then :meth:`Frontend.run`, an async iterator of
:class:`Piece`\\ s (content deltas already cut at stop strings, drafts, the end
with usage). The run waits for a slot (``concurrency``, 1 on one generator),
starts a hub stream and reads it as an ordinary subscriber. Leaving the
iterator early (the client went away) cancels the generation: the hub stops
it within one step.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteriaList

from .. import StreamHub
from ..events import CommitEvent, EndEvent, ErrorEvent, ProvisionalEvent
from .metrics import Metrics
from .protocol import ApiError, CompletionRequest
from .settings import HttpSettings
from .stops import StopStringCriteria, StopTextFilter

__all__ = ["Frontend", "Piece", "Admission"]


@dataclass(frozen=True, kw_only=True)
class Piece:
    """One thing to tell the client.

    ``kind``: ``"content"`` (``text``: released committed text, may be ``""``;
    ``commit``: the commit's step/drafted/accepted/n_committed), ``"draft"``
    (``text``: provisional text after the content so far, replacing any earlier
    draft; ``token_ids``), ``"end"`` (``finish_reason`` in OpenAI's terms,
    ``usage``), ``"error"`` (``text``: the message, ``code``).
    """

    kind: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    commit: dict[str, int] | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    code: str | None = None


@dataclass(eq=False)
class Admission:
    """One admitted request: its place among the open streams and, once started, its hub stream.

    Everything that gives its resources back is idempotent: :meth:`Frontend.abort`
    may be called from the response's cleanup and from the run's own ``finally``.
    """

    arrived: float
    stream_id: str
    stream: Any = None
    released: bool = False
    slot_held: bool = False
    running: bool = False
    cancelling: bool = False


_FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "cancelled", "error": "error"}


class Frontend:
    """Admission, tokenization and runs for one generator behind one hub (see the module docstring)."""

    def __init__(
        self, generator: Any, tokenizer: Any, settings: HttpSettings, *, hub: StreamHub | None = None
    ) -> None:
        if tokenizer is None or not callable(getattr(tokenizer, "decode", None)):
            raise ValueError("the HTTP server needs the model's tokenizer (an object with encode/decode)")
        self.generator = generator
        self.tokenizer = tokenizer
        self.settings = settings
        self.hub = hub if hub is not None else StreamHub(retention_s=settings.retention_s)
        self.metrics = Metrics()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._open = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._vocab = _vocab_size(generator, tokenizer)
        self._context = _context_length(generator)

    # ------------------------------------------------------------------ admission and prompts

    def admit(self) -> Admission:
        if self._open >= self.settings.max_open_streams:
            self.metrics.rejected.labels("open_streams").inc()
            raise ApiError(
                429,
                f"Too many open streams: this server runs at most {self.settings.max_open_streams} generations "
                "(queued or running) at once; retry shortly",
                code="too_many_open_streams", type="rate_limit_error", headers={"Retry-After": "1"},
            )  # fmt: skip
        self._open += 1
        self.metrics.open_streams.set(self._open)
        return Admission(arrived=time.perf_counter(), stream_id=uuid.uuid4().hex)

    def release(self, admission: Admission) -> None:
        if not admission.released:
            admission.released = True
            self._open -= 1
            self.metrics.open_streams.set(self._open)

    @property
    def open_streams(self) -> int:
        return self._open

    async def encode(self, request: CompletionRequest) -> list[int]:
        """The prompt's token ids (chat template for chat requests); ApiError 400/413 when unusable."""
        ids = await asyncio.to_thread(self._encode, request)
        if not ids:
            raise ApiError(400, "the prompt tokenizes to nothing", param="prompt", code="empty_prompt")
        if len(ids) > self.settings.max_prompt_tokens:
            self.metrics.rejected.labels("prompt_tokens").inc()
            raise ApiError(
                413, f"The prompt has {len(ids)} tokens; this server allows at most {self.settings.max_prompt_tokens}",
                param="messages" if request.chat else "prompt", code="prompt_too_long",
            )  # fmt: skip
        if self._context is not None and len(ids) >= self._context:
            raise ApiError(
                400, f"The prompt has {len(ids)} tokens; the model's context holds {self._context}",
                param="messages" if request.chat else "prompt", code="context_length_exceeded",
            )  # fmt: skip
        if self._vocab is not None and any(not 0 <= t < self._vocab for t in ids):
            raise ApiError(400, f"token ids must be in [0, {self._vocab})", param="prompt", code="invalid_value")
        return ids

    def _encode(self, request: CompletionRequest) -> list[int]:
        tok = self.tokenizer
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        if request.messages is not None:
            if not getattr(tok, "chat_template", None):
                raise ApiError(
                    400, "this model's tokenizer has no chat template; use /v1/completions", param="messages"
                )
            try:
                ids = tok.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
            except Exception as exc:  # noqa: BLE001 - a template may reject a message order
                raise ApiError(
                    400, f"the chat template rejected the messages: {str(exc)[:300]}", param="messages"
                ) from exc
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = tok(request.prompt, add_special_tokens=True)["input_ids"]
        ids = list(ids)
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(t) for t in ids]

    # ------------------------------------------------------------------ runs

    async def run(
        self, request: CompletionRequest, prompt_ids: list[int], admission: Admission
    ) -> AsyncIterator[Piece]:
        """Generate for ``request``; yields :class:`Piece`\\ s, the last one ``end`` (or ``error`` then ``end``).

        Gives ``admission`` back when the generation is over. Leaving early
        (or :meth:`abort`) cancels the generation.
        """
        metrics = self.metrics
        metrics.queue_depth.inc()
        try:
            try:
                await self._slots.acquire()
            finally:
                metrics.queue_depth.dec()
            admission.slot_held = True
            kwargs = request.generate_kwargs()
            if request.stop:
                kwargs["stopping_criteria"] = StoppingCriteriaList(
                    [StopStringCriteria(self.tokenizer, request.stop, len(prompt_ids))]
                )
            try:
                admission.stream = self.hub.start(
                    self.generator,
                    torch.tensor([prompt_ids], dtype=torch.long),
                    tokenizer=self.tokenizer,
                    provisional=request.include_drafts,
                    stream_id=admission.stream_id,
                    **kwargs,
                )
            except ValueError as exc:  # the hub refused the arguments: the request's fault
                yield Piece(kind="error", text=str(exc), code="bad_request")
                yield Piece(kind="end", finish_reason="error")
                return
            admission.running = True
            metrics.running.inc()
            async for piece in self._pieces(admission.stream, request, admission):
                yield piece
        finally:
            self.abort(admission)

    def abort(self, admission: Admission) -> None:
        """Finish a request's run: cancel its generation if still running (within one step), free its place."""
        stream = admission.stream
        if stream is not None and not stream.done:
            if not admission.cancelling:
                admission.cancelling = True
                self._spawn(self._cancel(stream, admission))
        else:
            self._finish_run(admission)

    async def _pieces(self, stream: Any, request: CompletionRequest, admission: Admission) -> AsyncIterator[Piece]:
        metrics = self.metrics
        stops = StopTextFilter(request.stop)
        first_step = last_step = None
        last_commit: float | None = None
        async for event in stream.subscribe():
            if isinstance(event, CommitEvent):
                if event.token_ids:
                    now = time.perf_counter()
                    if last_commit is None:
                        metrics.ttft.observe(now - admission.arrived)
                    else:
                        metrics.itl.observe(now - last_commit)
                    last_commit = now
                    first_step = event.step if first_step is None else first_step
                    last_step = event.step
                commit = {"step": event.step, "drafted": event.drafted, "accepted": event.accepted,
                          "n_committed": event.n_committed}  # fmt: skip
                yield Piece(kind="content", text=stops.push(event.text), commit=commit)
            elif isinstance(event, ProvisionalEvent):
                if not stops.stopped:
                    yield Piece(kind="draft", text=stops.held + event.text, token_ids=list(event.token_ids))
            elif isinstance(event, ErrorEvent):
                yield Piece(kind="error", text=event.message, code=event.code)
            elif isinstance(event, EndEvent):
                tail = stops.flush()
                if tail:
                    yield Piece(kind="content", text=tail)
                reason = "stop" if stops.stopped else _FINISH.get(event.finish_reason, event.finish_reason)
                usage = event.usage
                steps = 0 if first_step is None or last_step is None else last_step - first_step + 1
                yield Piece(kind="end", finish_reason=reason, usage=_usage(usage, steps))

    async def _cancel(self, stream: Any, admission: Admission) -> None:
        try:
            await stream.cancel()
        finally:
            self._finish_run(admission)

    def _finish_run(self, admission: Admission) -> None:
        if admission.running:
            admission.running = False
            self.metrics.running.dec()
            self._record_end(admission.stream)
        if admission.slot_held:
            admission.slot_held = False
            self._slots.release()
        self.release(admission)

    def _record_end(self, stream: Any) -> None:
        """Count a finished generation from the hub's own record of it (whether or not a client saw the end)."""
        history = stream.history
        end = history[-1] if history else None
        if not isinstance(end, EndEvent):
            return
        metrics, usage = self.metrics, end.usage
        metrics.finished.labels(end.finish_reason).inc()
        metrics.prompt_tokens.inc(usage.prompt_tokens)
        metrics.completion_tokens.inc(usage.completion_tokens)
        metrics.drafted.inc(usage.drafted)
        metrics.accepted.inc(usage.accepted)
        if usage.drafted:
            metrics.acceptance.observe(usage.accepted / usage.drafted)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        await self.hub.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _usage(usage: Any, steps: int) -> dict[str, Any]:
    """OpenAI's usage object, with our speculation figures under ``specdec``."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "specdec": {
            "drafted": usage.drafted,
            "accepted": usage.accepted,
            "acceptance_rate": (usage.accepted / usage.drafted) if usage.drafted else None,
            "steps": steps,
            "tokens_per_step": (usage.completion_tokens / steps) if steps else None,
        },
    }


def _vocab_size(generator: Any, tokenizer: Any) -> int | None:
    model = getattr(generator, "model", None) or getattr(generator, "target", None)
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if isinstance(size, int):
        return size
    try:
        return len(tokenizer)
    except TypeError:
        return None


def _context_length(generator: Any) -> int | None:
    config = getattr(getattr(generator, "model", None), "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
