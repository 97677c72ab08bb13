"""The one decode loop: rows admitted continuously, prefill chunks fused with verify blocks.

:class:`Engine` schedules requests onto the rows of the target's cache
(:mod:`specdec.kv`). Every :meth:`Engine.step` is one forward pass of the
target over all busy rows::

    admit waiting requests into free rows (lease a drafter, start the sequence)
    for each decoding row:  choose k, propose          (Sequence.plan)
    for each prefilling row: take the next prompt chunk
    one forward pass over every row's segment           (BatchedTarget.forward)
    for each decoding row:  verify, commit, emit        (Sequence.commit)
    retire finished rows (their room is free for the next step)

A row's cache needs no rollback call: its next segment starts at the position
of its newest committed token, and the slots after it are overwritten.

How much goes into one pass depends on the target's layout
(:attr:`~specdec.batch_target.BatchedTarget.layout`):

- **rectangle** (every row padded to the widest segment): prefill chunks are as
  wide as the widest verify block of the step (at least ``min_prefill_chunk``),
  so they add no padding; ``max_step_tokens`` caps decoding rows x widest block,
  each row drafting at most ``max_step_tokens // rows - 1``.
- **packed** (a pass costs its real tokens): ``max_step_tokens`` caps the verify
  tokens of all rows together; the rows share it in turn (the first row of the
  turn rotates every pass), each leaving one token for every row after it.
  Prefill chunks share ``prefill_step_tokens`` per pass (at least
  ``min_prefill_chunk``), rows admitted earlier first, so a newcomer's prompt
  goes in a few wide chunks instead of many verify-block-wide ones.

Either way a long prompt never makes the running rows wait a whole prefill;
with no row decoding, every prefilling row takes ``max_prefill_chunk`` tokens per pass.

**Prefix sharing.** Rows whose sequences begin alike (the same system prompt
or chat-template header, the same document asked twice, a conversation that
goes on from an earlier answer) compute those positions once. Before each
pass, a prefilling row that shares at least :data:`MIN_SHARED_PREFIX` tokens
with what another row has cached takes a copy of those slots
(:meth:`~specdec.batch_target.BatchedTarget.copy_prefix`) and prefills only
the rest; while a row admitted earlier is still prefilling the shared part,
the later one waits for it instead of computing the same positions beside
it. A position's keys and values are a function of the tokens up to it, so
the copy is what the row would have computed (up to the float rounding of a
different pass). Off for rows whose drafter reads the target's hidden states
(it needs them from the row's own prefill) and with ``share_prefixes=False``.

:meth:`Engine.submit` returns a :class:`Handle`: it collects the row's
verified blocks, can be cancelled (the row ends within one step) and gives
the row's :class:`~specdec.SpecOutput`. The engine is synchronous and
driven by its callers: ``handle.result()`` and iterating a handle call
:meth:`Engine.step` themselves. Steps hold a lock, so several threads may
submit and drive one engine; whichever thread steps runs every row's pass
(sinks of other threads' rows are called on it). A row that fails (its drafter or a sink
raises) ends with that error on its handle; the other rows go on.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from .batch_target import Segment, TargetRunner
from .errors import InvalidArgumentError
from .request import DrafterPool, Request
from .sequence import Sequence
from .types import DraftBlock, SpecOutput, SpecStats, VerifiedBlock

if TYPE_CHECKING:
    import torch

__all__ = ["MIN_SHARED_PREFIX", "Engine", "Handle"]

#: Shortest prefix (tokens) a row copies from another row's cache, or waits for.
MIN_SHARED_PREFIX = 16


class _AnySet:
    """Cancelled when the handle or the caller's own cancel object says so."""

    def __init__(self, *flags) -> None:
        self.flags = [f for f in flags if f is not None]

    def is_set(self) -> bool:
        return any(f.is_set() for f in self.flags)


class Handle:
    """One submitted request: its blocks as they land, cancellation, and its result."""

    def __init__(self, engine: Engine, request: Request, number: int) -> None:
        self.engine = engine
        self.request = request
        self.number = number  # submission order
        self.blocks: list[VerifiedBlock] = []
        self.output: SpecOutput | None = None
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self.submitted_at = time.perf_counter()

    @property
    def done(self) -> bool:
        return self.output is not None or self.error is not None

    def cancel(self) -> None:
        """End the row within one step (finish reason ``"cancelled"``)."""
        self.cancelled.set()

    def result(self) -> SpecOutput:
        """Run the engine until this request ends; its output, or the error that ended it."""
        while not self.done:
            self.engine.step()
        if self.error is not None:
            raise self.error
        assert self.output is not None
        return self.output

    def __iter__(self) -> Iterator[VerifiedBlock]:
        """The row's verified blocks, in order, driving the engine as needed."""
        seen = 0
        while True:
            while seen < len(self.blocks):
                seen += 1
                yield self.blocks[seen - 1]
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            self.engine.step()


@dataclass
class _Row:
    handle: Handle
    seq: Sequence
    slot: int  # buffer row in the cache
    prefilled: int = 0  # prompt positions cached so far (the prefill target is prompt_len - 1)
    block: DraftBlock | None = field(default=None)


class Engine:
    """Continuous batching of speculative requests over one target (see the module docstring)."""

    def __init__(
        self,
        target: TargetRunner,
        drafters: DrafterPool,
        *,
        max_rows: int = 16,
        min_prefill_chunk: int = 16,
        max_prefill_chunk: int = 1024,
        max_step_tokens: int | None = None,
        hidden_layers: tuple[int, ...] | None = None,
        prefill_step_tokens: int = 128,
        share_prefixes: bool = True,
    ) -> None:
        if max_rows < 1 or min_prefill_chunk < 1 or max_prefill_chunk < min_prefill_chunk or prefill_step_tokens < 1:
            raise InvalidArgumentError(
                "max_rows, min_prefill_chunk, prefill_step_tokens >= 1 and max_prefill_chunk >= min_prefill_chunk"
            )
        if max_step_tokens is not None and (isinstance(max_step_tokens, bool) or not isinstance(max_step_tokens, int)
                                            or max_step_tokens < 1):
            raise InvalidArgumentError(f"max_step_tokens must be None or an integer >= 1, got {max_step_tokens!r}")
        self.target = target
        self.drafters = drafters
        self.max_rows = max_rows
        self.min_prefill_chunk = min_prefill_chunk
        self.max_prefill_chunk = max_prefill_chunk
        # Verify tokens per pass (rectangle: padding included, decoding rows x widest block); None: no cap.
        self.max_step_tokens = max_step_tokens
        # Packed layout: prompt tokens per pass while rows decode (at least min_prefill_chunk).
        self.prefill_step_tokens = prefill_step_tokens
        # A pass costs its real tokens (packed) or rows x its widest segment (rectangle); runners without the
        # attribute (the compiled path) pad.
        self.packed = getattr(target, "layout", "rectangle") == "packed"
        self.waiting: deque[Handle] = deque()
        self.rows: dict[int, _Row] = {}  # slot -> row
        self.forwards = 0  # forward passes of the target so far
        self.rows_per_forward: Counter[int] = Counter()  # rows in a pass -> passes so far (how much was shared)
        # Target layers whose hidden states the rows' drafters read (hooked only while rows run).
        self.hidden_layers = hidden_layers
        # Prefix sharing (module docstring): not for hidden-state drafters, which need the row's own prefill.
        self.share_prefixes = share_prefixes and hidden_layers is None
        self._capturing = False
        self._numbers = itertools.count()
        self._lock = threading.RLock()

    # -- requests ----------------------------------------------------------------------------------

    def submit(self, request: Request) -> Handle:
        """Queue a validated request; it joins the batch at the next step with a free row."""
        with self._lock:
            handle = Handle(self, request, next(self._numbers))
            request.cancel = _AnySet(handle.cancelled, request.cancel)
            request.emitter.listen(handle.blocks.append)
            self.waiting.append(handle)
            return handle

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def run(self, handles: list[Handle]) -> None:
        """Step until every handle in ``handles`` is done."""
        while not all(h.done for h in handles):
            self.step()

    # -- one step ----------------------------------------------------------------------------------

    def step(self) -> None:
        """Admit, plan, one forward pass, commit, retire."""
        with self._lock:
            try:
                self._step()
            finally:
                if self._capturing and not self.rows and not self.waiting:
                    self.target.capture(None)  # idle: no hooks left on the model
                    self._capturing = False

    def _step(self) -> None:
        self._admit()
        planned: list[_Row] = []
        segments: list[Segment] = []
        decoding = [row for row in self.rows.values() if row.prefilled >= row.seq.prompt_len - 1]
        budget = self.max_step_tokens
        if self.packed and decoding:
            turn = self.forwards % len(decoding)  # who goes first (and may take most of the budget) rotates
            decoding = decoding[turn:] + decoding[:turn]
        for i, row in enumerate(decoding):
            seq = row.seq
            k_cap = None
            if budget is not None:
                # packed: what is left, less one token for each row after this one; rectangle: an even share
                k_cap = max(0, budget - (len(decoding) - i) if self.packed else budget // len(decoding) - 1)
            try:
                row.block = seq.plan(k_cap, rows=len(decoding))  # choose k (priced for this many rows), propose
            except Exception as exc:  # the row's drafter or sink failed: that row ends, the others go on
                self._retire(row, exc)
                continue
            if row.block is None:
                self._retire(row)
                continue
            ids = seq.block_ids(row.block)  # [k + 1]: newest committed token and the drafts
            segments.append(Segment(row.slot, seq.length - 1, ids))
            planned.append(row)
            if budget is not None and self.packed:
                budget -= int(ids.shape[0])
        prefilling = []
        for row, end in self._prefill_chunks(segments, self._share_prefixes()):
            segments.append(Segment(row.slot, row.prefilled, row.seq.prompt[row.prefilled : end], logits=False))
            prefilling.append((row, end))
        if not segments:
            return
        reads_hidden = self.hidden_layers is not None
        if reads_hidden and not self._capturing:
            self.target.capture(self.hidden_layers)
            self._capturing = True
        started = time.perf_counter()
        try:
            outputs = self.target.forward(segments)  # one pass for every row
        except Exception as exc:
            for row in planned + [r for r, _ in prefilling]:
                self._retire(row, exc)
            return
        verify_s = time.perf_counter() - started
        self.forwards += 1
        self.rows_per_forward[len(segments)] += 1
        for row, end in prefilling:
            start, row.prefilled = row.prefilled, end
            row.seq.stats.target_forwards += 1
            if reads_hidden:
                try:
                    row.seq.prefilled(self.target.hidden_states(row.slot, end - start))  # [chunk, layers, hidden]
                except Exception as exc:
                    self._retire(row, exc)
        for row, logits in zip(planned, outputs, strict=False):
            assert row.block is not None
            hidden = self.target.hidden_states(row.slot, len(row.block) + 1) if reads_hidden else None
            try:
                # verify, accept, emit
                row.seq.commit(cast("torch.Tensor", logits), row.block, verify_s, hidden_states=hidden)
            except Exception as exc:
                self._retire(row, exc)
                continue
            if row.seq.finish is not None:
                self._retire(row)

    def _share_prefixes(self) -> set[int]:
        """Copy cached shared prefixes into prefilling rows; the slots of rows that wait for an earlier row."""
        waiting: set[int] = set()
        if not self.share_prefixes or len(self.rows) < 2:
            return waiting
        rows = list(self.rows.values())  # admission order
        for i, row in enumerate(rows):
            seq = row.seq
            goal = seq.prompt_len - 1
            if row.prefilled + MIN_SHARED_PREFIX > goal:
                continue
            prompt = seq.tokens[:goal]
            best, source, pending = row.prefilled, None, 0
            for j, other in enumerate(rows):
                if other is row:
                    continue
                other_goal = other.seq.prompt_len - 1
                prefilling = other.prefilled < other_goal
                cached = other.prefilled if prefilling else other.seq.length - 1
                common = _common_prefix(other.seq.tokens[: max(cached, other_goal)], prompt)
                if min(common, cached) > best:
                    best, source = min(common, cached), other
                if j < i and prefilling:
                    pending = max(pending, common)  # an earlier row will cache this much of it
            if source is not None and best - row.prefilled >= MIN_SHARED_PREFIX:
                self.target.copy_prefix(source.slot, row.slot, best)
                seq.stats.shared_prefix_tokens += best - row.prefilled
                row.prefilled = best
            if pending - row.prefilled >= MIN_SHARED_PREFIX:
                waiting.add(row.slot)
        return waiting

    def _prefill_chunks(self, verify: list[Segment], waiting: set[int]) -> list[tuple[_Row, int]]:
        """(row, end of its chunk) for the rows still prefilling, given this pass's verify segments.

        Rows in ``waiting`` (slots) take no chunk this pass: an earlier row is prefilling their prefix.
        """
        if not verify:
            chunk, shared = self.max_prefill_chunk, None  # nobody waits: every row takes a full chunk
        elif self.packed:
            chunk, shared = self.max_prefill_chunk, max(self.min_prefill_chunk, self.prefill_step_tokens)
        else:
            widest = max(int(s.token_ids.shape[0]) for s in verify)
            chunk, shared = max(widest, self.min_prefill_chunk), None  # as wide as the rectangle already is
        chunks = []
        for row in list(self.rows.values()):  # admission order
            goal = row.seq.prompt_len - 1
            if row.prefilled >= goal:
                continue
            if row.seq.cancelled():
                self._retire(row)
                continue
            if row.slot in waiting or (shared is not None and shared <= 0):
                continue
            take = min(chunk, shared) if shared is not None else chunk
            end = min(goal, row.prefilled + take)
            if shared is not None:
                shared -= end - row.prefilled
            chunks.append((row, end))
        return chunks

    def _admit(self) -> None:
        while self.waiting and len(self.rows) < self.max_rows:
            handle = self.waiting[0]
            if handle.cancelled.is_set():
                self.waiting.popleft()
                handle.error = None
                handle.output = _empty_output(handle.request)
                handle.request.emitter.close()
                continue
            drafter = self.drafters.acquire()
            if drafter is None:
                return  # its drafter serves one row at a time: wait for it
            self.waiting.popleft()
            slot = min(set(range(self.max_rows)) - set(self.rows))
            request = handle.request
            target = self.target
            seq = request.sequence(
                drafter, vocab_size=target.vocab_size, context_length=target.context_length, device=target.device
            )
            row = _Row(handle, seq, slot)
            self.rows[slot] = row
            try:
                target.ensure(max(target.max_rows, slot + 1), request.room)
                seq.begin()
            except Exception as exc:
                self._retire(row, exc)

    def _retire(self, row: _Row, error: BaseException | None = None) -> None:
        del self.rows[row.slot]
        seq, handle = row.seq, row.handle
        try:
            seq.close(failed=error is not None)
        except Exception as exc:
            error = error or exc
        finally:
            self.drafters.release(seq.drafter)
        if error is not None:
            handle.error = error
            return
        seq.stats.wall_time_s = time.perf_counter() - handle.submitted_at
        assert seq.finish is not None
        handle.output = SpecOutput(
            sequences=seq.sequence.unsqueeze(0).clone(),
            stats=seq.stats,
            finish_reason=seq.finish,
            row_stats=[seq.stats],
            finish_reasons=[seq.finish],
        )


def _empty_output(request: Request) -> SpecOutput:
    prompt = request.prompt
    return SpecOutput(
        sequences=prompt.unsqueeze(0).clone(),
        stats=SpecStats(prompt_tokens=int(prompt.shape[0])),
        finish_reason="cancelled",
    )


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many leading tokens two LongTensors [n], [m] share."""
    n = min(int(a.shape[0]), int(b.shape[0]))
    if n == 0:
        return 0
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0, 0]) if differ.numel() else n
