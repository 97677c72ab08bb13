"""One generation and its events: :class:`Stream`, made by :meth:`specdec.streaming.StreamHub.start`.

A stream owns a generation thread (named ``specdec-stream-<id>``), an
:class:`~specdec.streaming._emitter.Emitter` as the generator's sink, an
:class:`~specdec.streaming._log.EventLog` and a
:class:`~specdec.streaming._fanout.FanoutBudget`. The emitter, still on the
generation thread, appends each event to an outbox; the first event of a batch
schedules one ``loop.call_soon_threadsafe``, which moves everything in the
outbox into the log on the event loop (several events per wake-up whenever the
loop is busy), then asks the budget for a wake-up round. The loop never blocks
on generation and generation never waits for a subscriber.

The stream does not know its hub: the hub hands it the generator's lock (streams
on one generator run one after another) and an ``on_end`` callback.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch

from specdec import InvalidArgumentError, SpecOutput, SpecStats

from ._emitter import Emitter, Finish
from ._fanout import FanoutBudget
from ._log import EventLog
from ._subscription import OverflowPolicy, Subscription, check_max_queue, check_policy
from .errors import StreamExpiredError
from .events import EndEvent, Event, StartEvent

__all__ = ["Stream"]


class Stream:
    """One generation and its events. Made by :meth:`StreamHub.start`; use it on the hub's event loop."""

    def __init__(
        self,
        stream_id: str,
        loop: asyncio.AbstractEventLoop,
        gen: Any,
        input_ids: Any,
        *,
        tokenizer: Any,
        provisional: bool,
        generate_kwargs: dict[str, Any],
        prompt_tokens: int,
        generator_lock: threading.Lock,
        max_queue: int = 1024,
        overflow: OverflowPolicy = "merge",
        fanout_share: float | None = None,
        fanout_max_delay_s: float = 0.05,
        on_end: Callable[[Stream], None] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self._loop = loop
        self._gen = gen
        self._input_ids = input_ids
        self._generate_kwargs = generate_kwargs
        self.provisional = provisional
        self.prompt_tokens = prompt_tokens
        self._lock = generator_lock
        self._max_queue = max_queue
        self._overflow: OverflowPolicy = overflow
        self._on_end = on_end
        self._events: EventLog | None = EventLog(loop)  # None once expired
        self.log: EventLog = self._events  # the readers' handle; stays valid for those holding it after expiry
        self._budget = FanoutBudget(self.log, share=fanout_share, max_delay_s=fanout_max_delay_s)
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._cancel = threading.Event()
        self._done: asyncio.Future[SpecOutput] = loop.create_future()
        self._outbox: collections.deque[Event | Finish] = collections.deque()
        self._drain_scheduled = False
        self._emitter: Emitter | None = Emitter(stream_id, tokenizer, provisional, self._post)
        self._thread = threading.Thread(target=self._work, name=f"specdec-stream-{stream_id}", daemon=True)

    def __repr__(self) -> str:
        state = "expired" if self.expired else "ended" if self.done else "running"
        return f"<Stream {self.stream_id} {state} seq={self.log.last_seq} subscribers={self.subscriber_count}>"

    # -- public -----------------------------------------------------------------------

    @property
    def input_ids(self) -> Any:
        """The prompt as passed to ``start``."""
        return self._input_ids

    @property
    def done(self) -> bool:
        """True once the ``end`` event has been published."""
        return self.log.ended

    @property
    def expired(self) -> bool:
        return self._events is None

    @property
    def finish_reason(self) -> str | None:
        """``eos``/``length``/``stop``/``cancelled``/``error`` once ended, else ``None``."""
        history = self.log.history
        if self.log.ended and history and isinstance(history[-1], EndEvent):
            return history[-1].finish_reason
        return None

    @property
    def subscriber_count(self) -> int:
        return sum(1 for sub in self._subs if sub.attached)

    @property
    def history(self) -> tuple[Event, ...]:
        """The stored events so far (every type but provisional), in seq order."""
        return tuple(self._events.history) if self._events is not None else ()

    @property
    def _waiters(self) -> list[asyncio.Future[None]]:
        """The futures of the subscribers waiting now (read by the fan-out tests)."""
        return self.log.waiters

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
        log = self._events
        if log is None:
            raise StreamExpiredError(
                f"stream {self.stream_id!r} ended and expired after its retention time; its events are gone",
                stream_id=self.stream_id,
            )
        if after_seq is not None and after_seq > log.last_seq:
            raise InvalidArgumentError(
                f"after_seq={after_seq} is beyond stream {self.stream_id!r}'s last seq {log.last_seq}"
            )
        maxsize = self._max_queue if max_queue is None else check_max_queue(max_queue)
        policy = self._overflow if overflow is None else check_policy(overflow)
        sub = Subscription(log, self.stream_id, log.history_index_after(after_seq), maxsize, policy)
        if not log.ended:
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

    def expire(self) -> None:
        """Drop the events (the hub calls this when retention passes). Readers holding the log keep it."""
        self._events = None

    # -- internals ----------------------------------------------------------------------

    def _check_loop(self, what: str) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not self._loop:
            raise RuntimeError(f"Stream.{what} must be called on the event loop the stream was started on")

    def begin(self, start_event: StartEvent) -> None:
        """Log the start event (seq 0) and start the generation thread (the hub calls this once)."""
        self.log.append(start_event)
        self.log.mark_released()
        self.log.wake()
        self._thread.start()

    def _work(self) -> None:
        """The generation thread: run generate, then post the closing events."""
        output: SpecOutput | None = None
        exc: BaseException | None = None
        emitter = self._emitter
        assert emitter is not None
        try:
            with self._lock:
                if self._cancel.is_set():
                    output = _cancelled_output(self._input_ids, self.prompt_tokens)
                else:
                    output = self._gen.generate(
                        self._input_ids,
                        on_tokens=emitter,
                        cancel=self._cancel,
                        **self._generate_kwargs,
                    )
        except BaseException as error:  # noqa: BLE001 - everything must reach the subscribers
            exc = error
        emitter.finish(output, exc, self.prompt_tokens)

    def _post(self, item: Event | Finish) -> None:
        """Generation thread: queue an event (or the Finish record) for the loop."""
        self._outbox.append(item)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    def _drain(self) -> None:
        """Event loop: move everything in the outbox into the log, then wake the waiting subscribers once."""
        self._drain_scheduled = False
        outbox = self._outbox
        finish: Finish | None = None
        while outbox:
            item = outbox.popleft()
            if isinstance(item, Finish):
                finish = item
            else:
                self.log.append(item)
        self._budget.request_round()
        if finish is not None:
            self._finish(finish)

    def _finish(self, finish: Finish) -> None:
        self._thread.join(timeout=5.0)  # it has nothing left to do but return
        if finish.exc is not None:
            self._done.set_exception(finish.exc)
            # Mark retrieved: a caller that only subscribes should not get "exception never retrieved".
            self._done.exception()
        else:
            self._done.set_result(finish.output)  # type: ignore[arg-type]
        self._subs.clear()
        self._gen = None
        self._emitter = None
        if self._on_end is not None:
            self._on_end(self)


def _cancelled_output(input_ids: Any, prompt_tokens: int) -> SpecOutput:
    ids = torch.as_tensor(input_ids).reshape(1, -1)[:, -prompt_tokens:] if prompt_tokens else torch.empty(1, 0)
    return SpecOutput(sequences=ids.long(), stats=SpecStats(prompt_tokens=prompt_tokens), finish_reason="cancelled")
