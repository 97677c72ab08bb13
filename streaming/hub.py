"""The asyncio stream hub: one generation, any number of subscribers.

::

    hub = StreamHub()
    stream = hub.start(gen, input_ids, tokenizer=tok, provisional=False, max_new_tokens=64)
    async for event in stream.subscribe():      # start, commit..., [error], end
        ...
    out = await stream.result()                 # the SpecOutput; raises what generation raised
    await stream.cancel()                       # stops generation within one step

How it works. ``start`` publishes the ``start`` event (seq 0) and runs
``gen.generate(..., on_tokens=sink, cancel=event)`` in a worker thread named
``specdec-stream-<id>``. The sink, still on the worker thread, numbers each
event, detokenizes it (:mod:`specdec.streaming.detok`) and appends it to an outbox;
the first event of a batch schedules one ``loop.call_soon_threadsafe``, which
moves everything in the outbox onto the stream's append-only event log on the
event loop (several events per wake-up whenever the loop is busy), then wakes
each subscriber that is waiting, once per batch. The loop never blocks on
generation and generation never waits for a subscriber.

Fan-out costs no per-subscriber work per event on the hub's side: a
subscriber is a cursor into the shared log (plus its replay position), and it
reads every event that is already there without suspending; it only suspends,
on a future of its own, when it has caught up. So with N subscribers one batch
of events costs N wake-ups, however many events the batch holds, and a
subscriber that falls behind costs nothing until it reads again.

Replay. A subscriber first reads the stream's history (everything but
provisionals) after ``after_seq``, then the log from the position the log had
when it subscribed; nothing is missed or duplicated because both positions are
taken in one loop callback. The history is kept until the stream ends and
``retention_s`` after.

Overflow policies. Each subscriber has a bound, ``max_queue``, on the live
events waiting for it (those between its cursor and the end of the log, plus
any the policy set aside). The bound is checked whenever the subscriber reads:
if more than ``max_queue`` events wait, the policy rewrites that backlog. The
backlog only grows between two reads, so this catches every overflow a check at
each arrival would, without touching the subscribers that keep up; and the
waiting events cost no memory beyond the log the stream keeps for replay anyway
(plus at most ``max_queue`` rewritten events per subscriber).

``"merge"`` (default)
    Drop every waiting provisional event (the next commit supersedes it
    anyway); if more than ``max_queue`` events still wait, merge each run of
    consecutive commits into one commit (token ids and texts concatenated,
    ``drafted``/``accepted`` summed, ``seq``/``step``/``n_committed``/``ts`` of
    the newest). No token or text is lost; the subscriber sees a jump in
    ``seq`` where events were merged or dropped, while ``n_committed`` stays
    continuous. If that is still too many (only with a very small
    ``max_queue``), the subscriber is closed as under ``"close"``.
``"close"``
    The waiting events are discarded and the subscriber receives
    ``ErrorEvent(code="slow_consumer", retryable=True, seq=-1)`` and then stops.

The fan-out budget (opt-in, e.g. ``StreamHub(fanout_share=0.02, fanout_max_delay_s=0.25)``,
the setting ``docs/bench_streaming.md`` measured to help at 1,000 subscribers). Every wake-up
round costs the loop a few microseconds per waiting subscriber, and in CPython
that time is taken from generation too whenever generation needs the GIL (a
small model's steps are mostly Python). With a budget, the hub measures the
loop's CPU time for each round (the wake-ups and the subscribers' first steps,
in which they read every event already logged) and starts the next round no
sooner than ``cost / fanout_share`` after this one began, and never more than
``fanout_max_delay_s`` (default 50 ms) after; events that land in between wait
in the log and go out together in the next round. With few subscribers a round
costs microseconds and nothing changes; with a thousand it trades latency (up to
``fanout_max_delay_s``) for generation speed. Events a held-back round delivers
at once do not count against ``max_queue``: only what a subscriber left unread
of earlier rounds does. The budget only amortizes the per-wake-up cost: each
subscriber still spends its own time on each event it reads, which no batching
removes. Subscribers that are not waiting still read new events as soon as they
ask.

A ``slow_consumer`` error concerns one subscriber, not the stream: it has
``seq == -1``, is never stored or replayed, and other subscribers never see it.
Resume with ``stream.subscribe(after_seq=subscription.last_seq)``.

Errors inside generation (a drafter that raises, bad generation arguments)
reach every subscriber as ``error`` (``code="bad_request"`` for
``ValueError``\\ s, else ``"internal"``) followed by ``end(finish_reason="error")``,
and ``result()`` raises the exception itself.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import threading
import time
import uuid
import weakref
from typing import Any, Literal

import torch

from specdec import InvalidArgumentError, SpecDecError, SpecOutput, SpecStats, VerifiedBlock

from .detok import make_detokenizer
from .events import (
    CommitEvent,
    EndEvent,
    ErrorEvent,
    Event,
    ProvisionalEvent,
    StartEvent,
    Usage,
    validate_stream_id,
)

__all__ = [
    "StreamHub",
    "Stream",
    "Subscription",
    "OverflowPolicy",
    "StreamError",
    "UnknownStreamError",
    "StreamExpiredError",
]

OverflowPolicy = Literal["merge", "close"]
_POLICIES = ("merge", "close")
_RESERVED_KWARGS = ("on_tokens", "on_draft", "cancel")
_EXPIRED_MEMORY = 4096  # how many expired stream ids the hub remembers for clearer errors


class StreamError(SpecDecError):
    """Root of the streaming layer's own errors."""


class UnknownStreamError(StreamError, KeyError):
    """No stream with this id is held by the hub."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class StreamExpiredError(UnknownStreamError):
    """The stream finished and its retention time passed: its events are gone."""


# --------------------------------------------------------------------------- subscriptions


def _merge_commits(first: CommitEvent, second: CommitEvent) -> CommitEvent:
    return CommitEvent(
        stream_id=second.stream_id,
        seq=second.seq,
        ts=second.ts,
        token_ids=list(first.token_ids) + list(second.token_ids),
        text=first.text + second.text,
        n_committed=second.n_committed,
        step=second.step,
        drafted=first.drafted + second.drafted,
        accepted=first.accepted + second.accepted,
    )


class Subscription:
    """One subscriber's view of a stream: an async iterator of events.

    Get one from :meth:`Stream.subscribe`. Iterate with ``async for``; leave
    with ``break`` (the subscription is dropped when it is garbage collected),
    with :meth:`aclose`, or use ``async with stream.subscribe() as sub``.
    ``last_seq`` is the ``seq`` of the last stream event handed out (``-1``
    before any), for resuming with ``subscribe(after_seq=sub.last_seq)``.
    Counters: ``dropped`` (provisionals dropped on overflow), ``merged``
    (commits folded into others on overflow).

    A subscription owns no queue of its own: it is a cursor into the stream's
    shared, append-only event log (see the module docstring), plus a short
    deque of the events that the overflow policy rewrote.
    """

    def __init__(self, stream: Stream, start: int, maxsize: int, overflow: OverflowPolicy) -> None:
        self._stream = stream
        self._loop = stream._loop
        self._history = stream._history  # replay: stored events [start, hist_end)
        self._pos = start
        self._hist_end = len(stream._history)
        self._log = stream._log  # live: every event from the cursor on
        self._cursor = len(stream._log)
        self._set_aside: collections.deque[Event] = collections.deque()  # rewritten by the overflow policy
        self._maxsize = maxsize
        self._overflow = overflow
        self._closed = False  # left, or closed as a slow consumer
        self._plain = start >= self._hist_end  # the fast path: only the shared log left to read
        self._waiter: asyncio.Future[None] | None = None
        self.last_seq = -1
        self.dropped = 0
        self.merged = 0

    # -- consumer side ----------------------------------------------------------------

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._plain:  # replay done, nothing set aside, not closed: read the shared log
                log = self._log
                cursor = self._cursor
                waiting = len(log) - cursor
                if waiting:
                    # Only events of earlier wake-up rounds count against max_queue: a round the fan-out
                    # budget held back arrives all at once, and that is the hub's delay, not ours.
                    if self._stream._overdue_mark - cursor <= self._maxsize:
                        event = log[cursor]
                        self._cursor = cursor + 1
                        self.last_seq = event.seq
                        return event
                    self._apply_overflow_policy()
                    continue
                stream = self._stream
                if stream._ended:  # the log is complete and read to its end
                    self._closed, self._plain = True, False
                    self._detach()
                    raise StopAsyncIteration
                # Wait for the next batch. Whoever wakes us appended at least one event or closed us.
                waiter = asyncio.Future(loop=self._loop)
                self._waiter = waiter
                stream._waiters.append(waiter)
                try:
                    await waiter
                finally:
                    self._waiter = None
                    if waiter.cancelled():  # the consumer was cancelled: do not leave its future behind
                        try:
                            stream._waiters.remove(waiter)
                        except ValueError:
                            pass
            else:
                event = self._next_special()
                if event is not None:
                    return event

    def _next_special(self) -> Event | None:
        """The next event from the replay or the set-aside events; ``None`` once back to reading the log."""
        while True:
            if self._pos < self._hist_end:
                event = self._history[self._pos]
                self._pos += 1
                self.last_seq = event.seq
                return event
            if self._closed:
                if self._set_aside:
                    event = self._set_aside.popleft()
                    if event.seq >= 0:  # not our own slow_consumer notice
                        self.last_seq = event.seq
                    return event
                self._detach()
                raise StopAsyncIteration
            if len(self._set_aside) + max(0, self._stream._overdue_mark - self._cursor) > self._maxsize:
                self._apply_overflow_policy()
                continue
            if self._set_aside:
                event = self._set_aside.popleft()
                self.last_seq = event.seq
                return event
            self._plain = True
            return None

    async def aclose(self) -> None:
        """Stop receiving events; the iterator ends. Safe to call more than once."""
        self._closed, self._plain = True, False
        self._set_aside.clear()
        self._pos = self._hist_end
        self._detach()
        self._wake()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once no more events will arrive (some may still be waiting to be read)."""
        return self._closed or self._stream._ended

    def qsize(self) -> int:
        """Live events waiting for this subscriber (replayed history not counted).

        Between reads this may exceed ``max_queue``: the overflow policy is
        applied when the subscriber next reads, to everything waiting then.
        """
        if self._closed:
            return len(self._set_aside)
        return len(self._set_aside) + len(self._log) - self._cursor

    # -- internals (event loop only) -------------------------------------------------

    def _detach(self) -> None:
        self._stream._subs.discard(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _apply_overflow_policy(self) -> None:
        """More than ``max_queue`` live events wait: take them out of the log and apply the policy."""
        backlog = list(self._set_aside)
        backlog.extend(self._log[self._cursor :])
        self._cursor = len(self._log)
        self._set_aside.clear()
        self._plain = False
        waiting, newest_seq = len(backlog), backlog[-1].seq
        if self._overflow == "merge":
            kept = [e for e in backlog if not isinstance(e, ProvisionalEvent)]
            self.dropped += len(backlog) - len(kept)
            if len(kept) > self._maxsize:
                merged: list[Event] = []
                for e in kept:
                    if isinstance(e, CommitEvent) and merged and isinstance(merged[-1], CommitEvent):
                        merged[-1] = _merge_commits(merged[-1], e)
                        self.merged += 1
                    else:
                        merged.append(e)
                kept = merged
            if len(kept) <= self._maxsize:
                self._set_aside.extend(kept)
                return
        self._set_aside.append(
            ErrorEvent(
                stream_id=self._stream.stream_id,
                seq=-1,
                code="slow_consumer",
                message=(
                    f"subscriber fell behind ({waiting} events waiting, limit {self._maxsize}, "
                    f"policy {self._overflow!r}) at seq {newest_seq}; resume with subscribe(after_seq={self.last_seq})"
                ),
                retryable=True,
            )
        )
        self._closed = True
        self._detach()


# --------------------------------------------------------------------------- the worker side


class _Finish:
    """The outbox's last item: what generate returned or raised."""

    __slots__ = ("output", "exc")

    def __init__(self, output: SpecOutput | None, exc: BaseException | None) -> None:
        self.output = output
        self.exc = exc


class _Emitter:
    """Runs on the worker thread: the generator's sink. Numbers and detokenizes events."""

    def __init__(self, stream: Stream, tokenizer: Any, provisional: bool) -> None:
        self._stream = stream
        self._stream_id = stream.stream_id
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
            self._stream._post(
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
        self._stream._post(
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
            self._stream._post(
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
            self._stream._post(
                ErrorEvent(
                    stream_id=self._stream_id,
                    seq=self._next_seq(),
                    code="bad_request" if isinstance(exc, ValueError) else "internal",
                    message=f"{type(exc).__name__}: {exc}",
                    retryable=False,
                )
            )
            finish_reason = "error"
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
        self._stream._post(
            EndEvent(
                stream_id=self._stream_id,
                seq=self._next_seq(),
                finish_reason=finish_reason,
                usage=usage,
                text="".join(self.texts),
            )
        )
        self._stream._post(_Finish(output, exc))


# --------------------------------------------------------------------------- streams


class Stream:
    """One generation and its events. Made by :meth:`StreamHub.start`; use it on the hub's event loop."""

    def __init__(
        self,
        hub: StreamHub,
        stream_id: str,
        loop: asyncio.AbstractEventLoop,
        gen: Any,
        input_ids: Any,
        tokenizer: Any,
        provisional: bool,
        generate_kwargs: dict[str, Any],
        prompt_tokens: int,
    ) -> None:
        self._hub = hub
        self.stream_id = stream_id
        self._loop = loop
        self._gen = gen
        self._input_ids = input_ids
        self._generate_kwargs = generate_kwargs
        self.provisional = provisional
        self.prompt_tokens = prompt_tokens
        self._history: list[Event] = []  # every event but provisionals: what subscribers replay
        self._history_seqs: list[int] = []
        self._log: list[Event] = []  # every event: what live subscribers read, each at its own cursor
        # len(self._log) at the last wake-up round, and what max_queue is measured against: the same
        # without a fan-out budget; with one, the length at the round before, since a held-back round
        # arrives all at once and a subscriber is only late with what it left unread of earlier rounds.
        self._released = 0
        self._overdue_mark = 0
        self._waiters: list[asyncio.Future[None]] = []  # one per subscriber waiting for the log to grow
        self._last_seq = -1
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._cancel = threading.Event()
        self._done: asyncio.Future[SpecOutput] = loop.create_future()
        self._outbox: collections.deque[Any] = collections.deque()
        self._drain_scheduled = False
        self._ended = False
        self._expired = False
        self._expire_handle: asyncio.TimerHandle | None = None
        # The fan-out budget (StreamHub(fanout_share=...)): when the next wake-up round may start.
        self._next_round_at = 0.0
        self._round_timer: asyncio.TimerHandle | None = None
        self._measuring_round = False
        self._round_wanted = False
        self._emitter = _Emitter(self, tokenizer, provisional)
        self._thread = threading.Thread(target=self._work, name=f"specdec-stream-{stream_id}", daemon=True)

    def __repr__(self) -> str:
        state = "expired" if self._expired else "ended" if self._ended else "running"
        return f"<Stream {self.stream_id} {state} seq={self._last_seq} subscribers={len(self._subs)}>"

    # -- public -----------------------------------------------------------------------

    @property
    def input_ids(self) -> Any:
        """The prompt as passed to ``start``."""
        return self._input_ids

    @property
    def done(self) -> bool:
        """True once the ``end`` event has been published."""
        return self._ended

    @property
    def expired(self) -> bool:
        return self._expired

    @property
    def finish_reason(self) -> str | None:
        """``eos``/``length``/``stop``/``cancelled``/``error`` once ended, else ``None``."""
        if self._ended and self._history and isinstance(self._history[-1], EndEvent):
            return self._history[-1].finish_reason
        return None

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    @property
    def history(self) -> tuple[Event, ...]:
        """The stored events so far (every type but provisional), in seq order."""
        return tuple(self._history)

    def subscribe(
        self, after_seq: int | None = None, *, max_queue: int | None = None, overflow: OverflowPolicy | None = None
    ) -> Subscription:
        """A new subscriber: the stored events with ``seq > after_seq`` (all when ``None``), then live ones.

        ``max_queue`` and ``overflow`` override the hub's defaults for this
        subscriber. Raises :class:`StreamExpiredError` if the stream ended and
        its retention passed, ``InvalidArgumentError`` for a negative or
        future ``after_seq``. Call it on the hub's event loop.
        """
        self._check_loop("subscribe")
        if after_seq is not None and (isinstance(after_seq, bool) or not isinstance(after_seq, int)):
            raise InvalidArgumentError(f"after_seq must be an int >= 0 or None, got {after_seq!r}")
        if after_seq is not None and after_seq < 0:
            raise InvalidArgumentError(f"after_seq must be >= 0 (or None for the whole stream), got {after_seq}")
        if self._expired:
            raise StreamExpiredError(
                f"stream {self.stream_id!r} ended and expired after its retention time; its events are gone"
            )
        if after_seq is not None and after_seq > self._last_seq:
            raise InvalidArgumentError(
                f"after_seq={after_seq} is beyond stream {self.stream_id!r}'s last seq {self._last_seq}"
            )
        maxsize = self._hub.max_queue if max_queue is None else _check_max_queue(max_queue)
        policy = self._hub.overflow if overflow is None else _check_policy(overflow)
        start = 0 if after_seq is None else bisect.bisect_right(self._history_seqs, after_seq)
        sub = Subscription(self, start, maxsize, policy)
        if not self._ended:
            self._subs.add(sub)
        return sub

    def __aiter__(self) -> Subscription:
        """``async for event in stream`` is ``async for event in stream.subscribe()``."""
        return self.subscribe()

    async def result(self) -> SpecOutput:
        """Wait for the end; the ``SpecOutput``, or raise what generation raised."""
        return await asyncio.shield(self._done)

    async def cancel(self) -> None:
        """Ask generation to stop (within one step) and wait until the stream has ended.

        Subscribers see ``end(finish_reason="cancelled")`` (or the real finish
        reason if generation ended first). Never raises generation's error;
        ``result()`` does.
        """
        self._cancel.set()
        await asyncio.wait([self._done])

    # -- internals ----------------------------------------------------------------------

    def _check_loop(self, what: str) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise RuntimeError(f"Stream.{what} must be called on the event loop the stream was started on")

    def _begin(self, start_event: StartEvent) -> None:
        self._dispatch(start_event)
        self._wake_waiters()
        self._thread.start()

    def _work(self) -> None:
        """The worker thread: run generate, then post the closing events."""
        output: SpecOutput | None = None
        exc: BaseException | None = None
        try:
            with self._hub._generator_lock(self._gen):
                if self._cancel.is_set():
                    output = _cancelled_output(self._input_ids, self.prompt_tokens)
                else:
                    output = self._gen.generate(
                        self._input_ids,
                        on_tokens=self._emitter,
                        cancel=self._cancel,
                        **self._generate_kwargs,
                    )
        except BaseException as error:  # noqa: BLE001 - everything must reach the subscribers
            exc = error
        self._emitter.finish(output, exc, self.prompt_tokens)

    def _post(self, item: Any) -> None:
        """Worker thread: queue an event (or the _Finish marker) for the loop."""
        self._outbox.append(item)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    def _drain(self) -> None:
        """Event loop: append everything in the outbox to the log, then wake the waiting subscribers once."""
        self._drain_scheduled = False
        outbox = self._outbox
        finish: _Finish | None = None
        while outbox:
            item = outbox.popleft()
            if isinstance(item, _Finish):
                finish = item
            else:
                self._dispatch(item)
        self._request_round()
        if finish is not None:
            self._finish(finish)

    def _dispatch(self, event: Event) -> None:
        self._log.append(event)
        if not isinstance(event, ProvisionalEvent):
            self._history.append(event)
            self._history_seqs.append(event.seq)
        self._last_seq = event.seq
        if isinstance(event, EndEvent):
            self._ended = True

    def _request_round(self) -> None:
        """New events are in the log: wake the waiting subscribers now, or when the fan-out budget allows."""
        share = self._hub.fanout_share
        if share is None:
            self._overdue_mark = self._released = len(self._log)  # no budget: every event counts at once
            self._wake_waiters()
        elif self._measuring_round:
            self._round_wanted = True  # decided once the running round's cost is known
        elif self._round_timer is None:
            delay = self._next_round_at - self._loop.time()
            if delay <= 0:
                self._budgeted_round()
            else:
                self._round_timer = self._loop.call_later(delay, self._budgeted_round)

    def _budgeted_round(self) -> None:
        """Wake the waiting subscribers and measure what that costs the loop (their first steps included)."""
        self._round_timer = None
        self._overdue_mark, self._released = self._released, len(self._log)
        if not self._waiters:
            return
        self._measuring_round = True
        started, cpu_started = self._loop.time(), time.thread_time()
        self._wake_waiters()
        # Runs after the woken subscribers' first steps, which read every event already in the log.
        self._loop.call_soon(self._round_done, started, cpu_started)

    def _round_done(self, started: float, cpu_started: float) -> None:
        self._measuring_round = False
        share = self._hub.fanout_share
        assert share is not None
        delay = min((time.thread_time() - cpu_started) / share, self._hub.fanout_max_delay_s)
        self._next_round_at = started + delay
        if self._round_wanted:  # events arrived while the round was measured
            self._round_wanted = False
            self._request_round()

    def _wake_waiters(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                if not waiter.done():  # a subscriber cancelled while waiting leaves a cancelled future
                    waiter.set_result(None)

    def _finish(self, finish: _Finish) -> None:
        self._thread.join(timeout=5.0)  # it has nothing left to do but return
        if finish.exc is not None:
            self._done.set_exception(finish.exc)
            # Mark retrieved: a caller that only subscribes should not get "exception never retrieved".
            self._done.exception()
        else:
            self._done.set_result(finish.output)  # type: ignore[arg-type]
        self._subs.clear()
        self._gen = None
        self._emitter = None  # type: ignore[assignment]
        self._hub._stream_ended(self)

    def _expire(self) -> None:
        # A fan-out round still held back is left to run: subscribers keep their own reference to the log
        # and may be waiting for it (with retention_s=0 the stream can expire before the round is due).
        self._expire_handle = None
        self._expired = True
        self._history = []
        self._history_seqs = []
        self._log = []
        self._hub._forget(self)


def _cancelled_output(input_ids: Any, prompt_tokens: int) -> SpecOutput:
    ids = torch.as_tensor(input_ids).reshape(1, -1)[:, -prompt_tokens:] if prompt_tokens else torch.empty(1, 0)
    return SpecOutput(sequences=ids.long(), stats=SpecStats(prompt_tokens=prompt_tokens), finish_reason="cancelled")


def _check_max_queue(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"max_queue must be an int >= 1, got {value!r}")
    return value


def _check_policy(value: Any) -> OverflowPolicy:
    if value not in _POLICIES:
        raise InvalidArgumentError(f"overflow must be one of {_POLICIES}, got {value!r}")
    return value


def _prompt_length(input_ids: Any, attention_mask: Any) -> int:
    if attention_mask is not None:
        try:
            return int(torch.as_tensor(attention_mask).sum())
        except Exception:  # let generate report the bad mask
            pass
    try:
        return int(torch.as_tensor(input_ids).numel())
    except Exception:  # let generate report the bad input
        return 0


def _json_param(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (bool, int, float, str)) for v in value)
    return False


def _model_name(gen: Any) -> str:
    model = getattr(gen, "model", None)
    if model is None:
        return type(gen).__name__
    name = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
    return str(name) if name else type(model).__name__


def _draft_name(gen: Any) -> str:
    drafter = getattr(gen, "drafter", None)
    if drafter is None:
        return ""
    return str(getattr(drafter, "name", "") or type(drafter).__name__)


# --------------------------------------------------------------------------- the hub


class StreamHub:
    """Starts generations as streams and keeps them for subscribers.

    ``retention_s``: how long a finished stream's events stay available to new
    subscribers (``None``: until :meth:`close`; ``0``: until the loop's next
    turn). ``max_queue`` and ``overflow``: each subscriber's queue bound and
    overflow policy (see the module docstring). ``fanout_share`` (optional, ``0 <
    share <= 1``): the fan-out budget, the largest share of the event loop's CPU
    time that waking one stream's subscribers may take (see the module
    docstring); ``None`` (the default) wakes them as soon as events land.
    ``fanout_max_delay_s``: with a budget, the longest a round may be put off.
    One hub serves one event loop.
    ``async with StreamHub() as hub`` cancels and waits for its streams on exit.
    """

    def __init__(
        self,
        *,
        retention_s: float | None = 300.0,
        max_queue: int = 1024,
        overflow: OverflowPolicy = "merge",
        fanout_share: float | None = None,
        fanout_max_delay_s: float = 0.05,
    ) -> None:
        if retention_s is not None and (
            isinstance(retention_s, bool) or not isinstance(retention_s, (int, float)) or retention_s < 0
        ):
            raise InvalidArgumentError(f"retention_s must be a number >= 0 or None, got {retention_s!r}")
        self.retention_s = retention_s
        self.max_queue = _check_max_queue(max_queue)
        self.overflow: OverflowPolicy = _check_policy(overflow)
        if fanout_share is not None and (
            isinstance(fanout_share, bool)
            or not isinstance(fanout_share, (int, float))
            or not 0 < fanout_share <= 1
        ):
            raise InvalidArgumentError(f"fanout_share must be a number in (0, 1] or None, got {fanout_share!r}")
        self.fanout_share: float | None = None if fanout_share is None else float(fanout_share)
        if isinstance(fanout_max_delay_s, bool) or not isinstance(fanout_max_delay_s, (int, float)) or not (
            0 < fanout_max_delay_s < float("inf")
        ):
            raise InvalidArgumentError(
                f"fanout_max_delay_s must be a number of seconds > 0, got {fanout_max_delay_s!r}"
            )
        self.fanout_max_delay_s = float(fanout_max_delay_s)
        self._streams: dict[str, Stream] = {}
        self._expired_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
        self._locks_lock = threading.Lock()
        self._closed = False

    def start(
        self,
        gen: Any,
        input_ids: Any,
        *,
        tokenizer: Any = None,
        provisional: bool = False,
        stream_id: str | None = None,
        **generate_kwargs: Any,
    ) -> Stream:
        """Start ``gen.generate(input_ids, **generate_kwargs)`` in a worker thread and return its stream.

        ``gen`` is a ``SpeculativeGenerator`` (anything with a ``generate``
        taking ``on_tokens=`` and ``cancel=``). ``tokenizer`` (optional) gives
        the events their text. ``provisional=True`` also streams draft tokens
        before verification. ``stream_id`` defaults to a random hex id. Streams
        on the same generator run one after another. Call from a coroutine.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("StreamHub.start must be called from a coroutine on a running event loop") from None
        if self._closed:
            raise StreamError("this StreamHub is closed")
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("a StreamHub serves one event loop; make one hub per loop")
        if not callable(getattr(gen, "generate", None)):
            raise InvalidArgumentError(
                f"gen must be a SpeculativeGenerator (an object with a generate method), got {type(gen).__name__}"
            )
        if not isinstance(provisional, bool):
            raise InvalidArgumentError(f"provisional must be True or False, got {provisional!r}")
        reserved = [name for name in _RESERVED_KWARGS if name in generate_kwargs]
        if reserved:
            raise InvalidArgumentError(
                f"{', '.join(reserved)} cannot be passed to StreamHub.start: the hub supplies them "
                "(subscribe to the stream, or use stream.cancel())"
            )
        if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)):
            raise InvalidArgumentError(f"tokenizer must have a decode method, got {type(tokenizer).__name__}")
        if input_ids is None:
            raise InvalidArgumentError("input_ids is required: a LongTensor [1, length] or a list of ints")
        if stream_id is None:
            stream_id = uuid.uuid4().hex
        else:
            try:
                validate_stream_id(stream_id)
            except ValueError as exc:
                raise InvalidArgumentError(str(exc)) from None
            if stream_id in self._streams:
                raise InvalidArgumentError(f"stream id {stream_id!r} is already in use; pick another")
        prompt_tokens = _prompt_length(input_ids, generate_kwargs.get("attention_mask"))
        stream = Stream(
            self, stream_id, loop, gen, input_ids, tokenizer, provisional, generate_kwargs, prompt_tokens
        )
        self._streams[stream_id] = stream
        self._expired_ids.pop(stream_id, None)
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in generate_kwargs.items() if _json_param(v)}
        params["provisional"] = provisional
        stream._begin(
            StartEvent(
                stream_id=stream_id,
                seq=0,
                ts=time.time(),
                model=_model_name(gen),
                draft=_draft_name(gen),
                prompt_tokens=prompt_tokens,
                params=params,
            )
        )
        return stream

    def get(self, stream_id: str) -> Stream:
        """The stream with this id; :class:`UnknownStreamError` (a ``KeyError``) if the hub has none,
        :class:`StreamExpiredError` if it ended and expired."""
        stream = self._streams.get(stream_id) if isinstance(stream_id, str) else None
        if stream is not None:
            return stream
        if isinstance(stream_id, str) and stream_id in self._expired_ids:
            raise StreamExpiredError(f"stream {stream_id!r} ended and expired after its retention time")
        raise UnknownStreamError(f"no stream with id {stream_id!r}")

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    @property
    def stream_ids(self) -> list[str]:
        """Ids of the streams held now (running, or ended and within retention)."""
        return list(self._streams)

    async def close(self) -> None:
        """Cancel every running stream, wait for them to end, and drop all streams."""
        self._closed = True
        streams = list(self._streams.values())
        for stream in streams:
            stream._cancel.set()
        if streams:
            await asyncio.wait([s._done for s in streams])
        for stream in streams:
            if stream._expire_handle is not None:
                stream._expire_handle.cancel()
                stream._expire_handle = None
            if not stream._expired:
                stream._expire()

    async def __aenter__(self) -> StreamHub:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # -- internals ----------------------------------------------------------------------

    def _generator_lock(self, gen: Any) -> threading.Lock:
        with self._locks_lock:
            try:
                lock = self._locks.get(gen)
                if lock is None:
                    lock = self._locks[gen] = threading.Lock()
            except TypeError:  # not weak-referenceable: no serialization across streams
                lock = threading.Lock()
            return lock

    def _stream_ended(self, stream: Stream) -> None:
        if self.retention_s is None or self._closed:
            return
        assert self._loop is not None
        stream._expire_handle = self._loop.call_later(self.retention_s, stream._expire)

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._expired_ids[stream.stream_id] = None
            while len(self._expired_ids) > _EXPIRED_MEMORY:
                self._expired_ids.popitem(last=False)
