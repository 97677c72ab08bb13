"""Bridges from a stream to code that is not written for asyncio events.

- :func:`feed_streamer`: drive any transformers ``BaseStreamer`` (``TextStreamer``,
  ``TextIteratorStreamer``, ...) from a stream, the way ``model.generate`` would:
  ``put(prompt)``, then ``put(tokens)`` per verified block, then ``end()``.
- :class:`BlockingHub` / :class:`BlockingStream`: the hub for synchronous code. It
  runs an event loop in one background thread (``specdec-loop``) for as long as
  the hub is open; ``for event in stream`` blocks until each event arrives.
- :func:`iter_events`: one generation as a plain iterator of events.

Example (no asyncio in sight)::

    with BlockingHub() as hub:
        stream = hub.start(gen, input_ids, tokenizer=tok, max_new_tokens=64)
        for event in stream:
            if event.type == "commit":
                print(event.text, end="", flush=True)
        out = stream.result()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from typing import Any

import torch

from specdec import SpecOutput

from .events import CommitEvent, Event
from .hub import OverflowPolicy, Stream, StreamHub, Subscription

__all__ = ["feed_streamer", "BlockingHub", "BlockingStream", "iter_events"]


async def feed_streamer(stream: Stream, streamer: Any, *, put_prompt: bool = True) -> SpecOutput:
    """Feed ``streamer`` (a transformers ``BaseStreamer``) from ``stream``; return ``await stream.result()``.

    Calls ``streamer.put(prompt_ids)`` first when ``put_prompt`` (as
    ``generate`` does, so ``TextStreamer(tok, skip_prompt=True)`` behaves as
    usual), then ``streamer.put(LongTensor[n])`` for each commit, then
    ``streamer.end()`` — also when generation fails, before ``result()`` raises.
    """
    try:
        if put_prompt:
            streamer.put(torch.as_tensor(stream.input_ids).reshape(1, -1))
        async for event in stream.subscribe():
            if isinstance(event, CommitEvent) and event.token_ids:
                streamer.put(torch.tensor(event.token_ids, dtype=torch.long))
    finally:
        streamer.end()
    return await stream.result()


class BlockingStream:
    """A :class:`Stream` seen from synchronous code (made by :meth:`BlockingHub.start`)."""

    def __init__(self, hub: BlockingHub, stream: Stream) -> None:
        self._hub = hub
        self.stream = stream
        self.stream_id = stream.stream_id

    def events(
        self,
        after_seq: int | None = None,
        *,
        timeout: float | None = None,
        max_queue: int | None = None,
        overflow: OverflowPolicy | None = None,
    ) -> Iterator[Event]:
        """Iterate the events like ``stream.subscribe(after_seq)``; each wait is at most ``timeout`` seconds
        (``TimeoutError`` after that; the subscription stays valid until the iterator is closed)."""
        call = self._hub.call
        sub: Subscription = call(_subscribe(self.stream, after_seq, max_queue, overflow), None)
        try:
            while True:
                event = call(_next(sub), timeout)
                if event is None:
                    return
                yield event
        finally:
            if not self._hub.closed:
                call(sub.aclose(), None)

    def __iter__(self) -> Iterator[Event]:
        return self.events()

    def result(self, timeout: float | None = None) -> SpecOutput:
        """Block until the end; the ``SpecOutput`` or the exception generation raised."""
        return self._hub.call(self.stream.result(), timeout)

    def cancel(self, timeout: float | None = None) -> None:
        """Stop generation within one step and wait for the stream to end."""
        self._hub.call(self.stream.cancel(), timeout)


async def _subscribe(stream: Stream, after_seq: int | None, max_queue: int | None, overflow: Any) -> Subscription:
    return stream.subscribe(after_seq, max_queue=max_queue, overflow=overflow)


async def _next(sub: Subscription) -> Event | None:
    try:
        return await sub.__anext__()
    except StopAsyncIteration:
        return None


async def _make_hub(kwargs: dict[str, Any]) -> StreamHub:
    return StreamHub(**kwargs)


class BlockingHub:
    """A :class:`StreamHub` for synchronous code; use as a context manager (or call :meth:`close`).

    Keyword arguments go to :class:`StreamHub` (``retention_s``, ``max_queue``, ``overflow``).
    """

    def __init__(self, **hub_kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="specdec-loop", daemon=True)
        self._thread.start()
        self.closed = False
        try:
            self.hub: StreamHub = self.call(_make_hub(hub_kwargs), None)
        except BaseException:
            self._shutdown()
            raise

    def call(self, coro: Any, timeout: float | None) -> Any:
        """Run ``coro`` on the hub's loop and wait up to ``timeout`` seconds for its result."""
        if self.closed:
            coro.close()
            raise RuntimeError("this BlockingHub is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer from the stream within {timeout} s") from None

    def start(self, gen: Any, input_ids: Any, **kwargs: Any) -> BlockingStream:
        """Like :meth:`StreamHub.start` (same arguments)."""

        async def start() -> Stream:
            return self.hub.start(gen, input_ids, **kwargs)

        return BlockingStream(self, self.call(start(), None))

    def get(self, stream_id: str) -> BlockingStream:
        async def get() -> Stream:
            return self.hub.get(stream_id)

        return BlockingStream(self, self.call(get(), None))

    def close(self) -> None:
        """Cancel running streams, wait for them, stop the loop thread. Safe to call twice."""
        if self.closed:
            return
        try:
            self.call(self.hub.close(), None)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self.closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def __enter__(self) -> BlockingHub:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def iter_events(gen: Any, input_ids: Any, **kwargs: Any) -> Iterator[Event]:
    """Run one generation and yield its events synchronously (``start`` ... ``end``).

    Arguments are those of :meth:`StreamHub.start`. A failed generation
    yields its ``error`` and ``end`` events and then raises the exception.
    Closing the iterator early cancels the generation.
    """
    with BlockingHub() as hub:
        stream = hub.start(gen, input_ids, **kwargs)
        finished = False
        try:
            yield from stream.events()
            finished = True
        finally:
            if not finished:
                stream.cancel()
        stream.result()
