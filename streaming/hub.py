"""The asyncio stream hub: starts generations as streams and keeps them for subscribers.

::

    hub = StreamHub()
    stream = hub.start(gen, input_ids, tokenizer=tok, model_name="SmolLM2", draft_name="ngram", max_new_tokens=64)
    async for event in stream.subscribe():      # start, commit..., [error], end
        ...
    out = await stream.result()                 # the SpecOutput; raises what generation raised
    await stream.cancel()                       # stops generation within one step

The rooms, each depending only on those below it (no class reads another's
underscored attributes):

- :mod:`.hub` (this module): validates ``start``'s arguments, numbers nothing, owns the streams by id,
  one lock per generator (none for a generator with `concurrent_generate`, whose streams share one
  engine and its forward passes), and each finished stream's retention timer;
- :mod:`.stream`: one generation thread, its outbox and its :class:`.Stream` API (``subscribe``, ``result``,
  ``cancel``);
- :mod:`._emitter`: the generator's sink, turning ``on_block`` / ``on_draft`` calls into numbered,
  detokenized events through a callback;
- :mod:`._fanout`: the fan-out budget, deciding when waiting subscribers are woken;
- :mod:`._subscription`: one subscriber's cursor and overflow policy (``"merge"`` or ``"close"``);
- :mod:`._log`: the event log (entries, history, waiters, release marks, ended flag).

Fan-out costs no per-subscriber work per event on the hub's side: a
subscriber is a cursor into the shared log, reads every event already there
without suspending, and only suspends, on a future of its own, when it has
caught up. With N subscribers one batch of events costs N wake-ups, however
many events the batch holds.

Replay. A subscriber first reads the stream's history (everything but
provisionals) after ``after_seq``, then the live log. The history is kept
until the stream ends and ``retention_s`` after; the MQTT worker uses the same
history as its replay store.

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
import collections
import threading
import time
import uuid
import weakref
from typing import Any

import torch

from specdec import InvalidArgumentError

from ._fanout import check_fanout
from ._subscription import OverflowPolicy, Subscription, check_max_queue, check_policy
from .errors import StreamError, StreamExpiredError, UnknownStreamError
from .events import StartEvent, validate_stream_id
from .stream import Stream

__all__ = [
    "StreamHub",
    "Stream",
    "Subscription",
    "OverflowPolicy",
    "StreamError",
    "UnknownStreamError",
    "StreamExpiredError",
]

_RESERVED_KWARGS = ("on_tokens", "on_draft", "cancel")
_EXPIRED_MEMORY = 4096  # how many expired stream ids the hub remembers for clearer errors


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
        self.max_queue = check_max_queue(max_queue)
        self.overflow: OverflowPolicy = check_policy(overflow)
        self.fanout_share, self.fanout_max_delay_s = check_fanout(fanout_share, fanout_max_delay_s)
        self._streams: dict[str, Stream] = {}
        self._expired_ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
        self._locks_lock = threading.Lock()
        self._expiry: dict[str, asyncio.TimerHandle] = {}  # retention timers of ended streams
        self._closed = False

    def start(
        self,
        gen: Any,
        input_ids: Any,
        *,
        tokenizer: Any = None,
        provisional: bool = False,
        stream_id: str | None = None,
        model_name: str | None = None,
        draft_name: str | None = None,
        **generate_kwargs: Any,
    ) -> Stream:
        """Start ``gen.generate(input_ids, **generate_kwargs)`` in a worker thread and return its stream.

        ``gen`` is a ``SpeculativeGenerator`` (anything with a ``generate``
        taking ``on_tokens=`` and ``cancel=``). ``tokenizer`` (optional) gives
        the events their text. ``provisional=True`` also streams draft tokens
        before verification. ``stream_id`` defaults to a random hex id. Streams
        on the same generator run one after another. ``model_name`` and
        ``draft_name`` go into the ``start`` event; when not given they are
        guessed from ``gen.model`` / ``gen.drafter`` (class or path names).
        Call from a coroutine.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("StreamHub.start must be called from a coroutine on a running event loop") from None
        if self._closed:
            raise StreamError("this StreamHub is closed", code="hub_closed")
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
        for label, value in (("model_name", model_name), ("draft_name", draft_name)):
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentError(f"{label} must be a str or None, got {type(value).__name__}")
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
            stream_id,
            loop,
            gen,
            input_ids,
            tokenizer=tokenizer,
            provisional=provisional,
            generate_kwargs=generate_kwargs,
            prompt_tokens=prompt_tokens,
            generator_lock=self._generator_lock(gen),
            max_queue=self.max_queue,
            overflow=self.overflow,
            fanout_share=self.fanout_share,
            fanout_max_delay_s=self.fanout_max_delay_s,
            on_end=self._stream_ended,
        )
        self._streams[stream_id] = stream
        self._expired_ids.pop(stream_id, None)
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in generate_kwargs.items() if _json_param(v)}
        params["provisional"] = provisional
        stream.begin(
            StartEvent(
                stream_id=stream_id,
                seq=0,
                ts=time.time(),
                model=model_name if model_name is not None else _model_name(gen),
                draft=draft_name if draft_name is not None else _draft_name(gen),
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
            raise StreamExpiredError(
                f"stream {stream_id!r} ended and expired after its retention time", stream_id=stream_id
            )
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
        if streams:
            await asyncio.gather(*(stream.cancel() for stream in streams))
        for stream in streams:
            self._expire(stream)

    async def __aenter__(self) -> StreamHub:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    # -- internals ----------------------------------------------------------------------

    def _generator_lock(self, gen: Any) -> threading.Lock:
        if getattr(gen, "concurrent_generate", False):
            return threading.Lock()  # its generate calls share one engine: no serialization across streams
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
        self._expiry[stream.stream_id] = self._loop.call_later(self.retention_s, self._expire, stream)

    def _expire(self, stream: Stream) -> None:
        """Retention passed (or the hub closes): the stream drops its events and the hub forgets it.

        A fan-out round still held back is left to run: subscribers keep their own reference to the
        log and may be waiting for it (with retention_s=0 the stream can expire before the round is due).
        """
        handle = self._expiry.get(stream.stream_id)
        if handle is not None and self._streams.get(stream.stream_id) is stream:
            handle.cancel()
            del self._expiry[stream.stream_id]
        stream.expire()
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._expired_ids[stream.stream_id] = None
            while len(self._expired_ids) > _EXPIRED_MEMORY:
                self._expired_ids.popitem(last=False)


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
