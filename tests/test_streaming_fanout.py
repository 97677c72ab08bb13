"""StreamHub fan-out: the shared event log, per-subscriber cursors, wake-up rounds and the fan-out budget."""

from __future__ import annotations

import asyncio
import time

import pytest

from specdec import InvalidArgumentError, SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.streaming import CommitEvent, EndEvent, ErrorEvent, ProvisionalEvent, StartEvent, StreamHub

from _streaming_fixtures import WrappedDrafter, byte_level_tokenizer, run, stream_threads, tiny_llama

PROMPT = "the lazy dog héllo wörld 日本語 the lazy dog"


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(vocab_size=len(tok), seed=1)


@pytest.fixture()
def prompt_ids(tok):
    return tok(PROMPT, return_tensors="pt").input_ids


async def _collect(sub):
    return [event async for event in sub]


def _completion(out, prompt_ids):
    return out.sequences[0, prompt_ids.shape[1] :].tolist()


@pytest.mark.parametrize("fanout_share", [None, 0.01])
def test_many_subscribers_get_identical_gap_free_streams(tok, model, prompt_ids, fanout_share):
    gen = SpeculativeGenerator(model, NGramDrafter(num_draft_tokens=4))

    async def main():
        hub = StreamHub(fanout_share=fanout_share)
        stream = hub.start(gen, prompt_ids, tokenizer=tok, provisional=True, max_new_tokens=40)
        tasks = [asyncio.create_task(_collect(stream.subscribe())) for _ in range(300)]
        out = await stream.result()
        return out, await asyncio.gather(*tasks)

    out, results = run(main())
    first = results[0]
    assert all(events == first for events in results)
    assert [e.seq for e in first] == list(range(len(first)))
    assert isinstance(first[0], StartEvent) and isinstance(first[-1], EndEvent)
    assert any(isinstance(e, ProvisionalEvent) for e in first)
    assert [t for e in first if isinstance(e, CommitEvent) for t in e.token_ids] == _completion(out, prompt_ids)
    assert not stream_threads()


def test_late_subscriber_replays_history_then_reads_the_live_log(tok, model, prompt_ids):
    drafter = WrappedDrafter(NGramDrafter(num_draft_tokens=4), pause_at=5)
    gen = SpeculativeGenerator(model, drafter)

    async def main():
        stream = StreamHub().start(gen, prompt_ids, tokenizer=tok, provisional=True, max_new_tokens=40)
        early = asyncio.create_task(_collect(stream.subscribe()))
        while not drafter.paused.is_set():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)
        joined_at = stream.history[-1].seq
        late = stream.subscribe()
        drafter.resume.set()
        late_events = await _collect(late)
        await stream.result()
        return await early, late_events, joined_at

    early, late, joined_at = run(main())
    # Before the join: the stored history (no provisionals). After it: exactly what the early subscriber saw live.
    replayed = [e for e in late if e.seq <= joined_at]
    assert replayed == [e for e in early if e.seq <= joined_at and not isinstance(e, ProvisionalEvent)]
    assert [e for e in late if e.seq > joined_at] == [e for e in early if e.seq > joined_at]
    assert any(isinstance(e, ProvisionalEvent) and e.seq > joined_at for e in late)


def test_overflow_policy_applies_to_the_whole_backlog_at_the_next_read(tok, model, prompt_ids):
    gen = SpeculativeGenerator(model, NGramDrafter(num_draft_tokens=4))

    async def main():
        stream = StreamHub(max_queue=3).start(gen, prompt_ids, tokenizer=tok, provisional=True, max_new_tokens=40)
        sub = stream.subscribe()
        out = await stream.result()  # nobody read: the whole stream waits in the log
        waiting_before = sub.qsize()
        start = await sub.__anext__()  # replayed history: the live backlog is untouched
        waiting_after_replay = sub.qsize()
        first_live = await sub.__anext__()  # the first live read applies the policy to the whole backlog
        waiting_after = sub.qsize()
        rest = await _collect(sub)
        assert waiting_after_replay == waiting_before
        return out, sub, waiting_before, waiting_after, [start, first_live] + rest

    out, sub, waiting_before, waiting_after, events = run(main())
    assert waiting_before > 3  # the bound is enforced when the subscriber reads, not by the producer
    assert isinstance(events[0], StartEvent) and waiting_after < 3
    assert sub.dropped > 0 and sub.merged > 0
    assert not any(isinstance(e, ProvisionalEvent) for e in events)
    assert [t for e in events if isinstance(e, CommitEvent) for t in e.token_ids] == _completion(out, prompt_ids)
    assert "".join(e.text for e in events if isinstance(e, CommitEvent)) == events[-1].text
    assert isinstance(events[-1], EndEvent)


def test_a_cancelled_waiting_subscriber_leaves_nothing_behind(tok, model, prompt_ids):
    drafter = WrappedDrafter(NGramDrafter(num_draft_tokens=4), pause_at=2)
    gen = SpeculativeGenerator(model, drafter)

    async def main():
        stream = StreamHub().start(gen, prompt_ids, tokenizer=tok, max_new_tokens=20)
        keeper = asyncio.create_task(_collect(stream.subscribe()))

        async def read_one_then_wait():
            sub = stream.subscribe()
            async for _ in sub:
                pass

        quitters = [asyncio.create_task(read_one_then_wait()) for _ in range(5)]
        while not drafter.paused.is_set():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)  # everyone has read what there is and waits
        assert len(stream._waiters) == 6
        for task in quitters:
            task.cancel()
        await asyncio.gather(*quitters, return_exceptions=True)
        waiting_after_cancel = len(stream._waiters)
        drafter.resume.set()
        events = await keeper
        await stream.result()
        return waiting_after_cancel, events, stream

    waiting_after_cancel, events, stream = run(main())
    assert waiting_after_cancel == 1  # only the keeper's future is left in the stream's list
    assert isinstance(events[-1], EndEvent) and stream._waiters == []
    assert not stream_threads()


def test_fanout_budget_is_validated():
    for bad in (0, -0.1, 1.5, "0.1", True):
        with pytest.raises(InvalidArgumentError, match="fanout_share"):
            StreamHub(fanout_share=bad)
    for bad in (0, -1, float("inf"), None, "1"):
        with pytest.raises(InvalidArgumentError, match="fanout_max_delay_s"):
            StreamHub(fanout_share=0.1, fanout_max_delay_s=bad)
    assert StreamHub(fanout_share=1).fanout_share == 1.0
    assert StreamHub().fanout_share is None and StreamHub().fanout_max_delay_s == 0.05


def test_fanout_budget_holds_rounds_back_but_loses_nothing(tok, model, prompt_ids):
    """A tiny budget with a long cap: events pile up between rounds and a round carries several."""

    class PacedDrafter(WrappedDrafter):  # a step every few ms, so that a held-back round finds several events
        def propose(self, max_tokens):
            time.sleep(0.004)
            return super().propose(max_tokens)

    gen = SpeculativeGenerator(model, PacedDrafter(NGramDrafter(num_draft_tokens=4)))

    async def main():
        hub = StreamHub(fanout_share=1e-4, fanout_max_delay_s=0.2)
        stream = hub.start(gen, prompt_ids, tokenizer=tok, max_new_tokens=60)
        reads_per_wake: list[int] = []

        async def count_batches():
            sub = stream.subscribe()
            events, since_wait = [], 0
            while True:
                was_waiting = sub.qsize() == 0
                try:
                    event = await sub.__anext__()
                except StopAsyncIteration:
                    reads_per_wake.append(since_wait)
                    break
                if was_waiting:
                    if since_wait:
                        reads_per_wake.append(since_wait)
                    since_wait = 0
                since_wait += 1
                events.append(event)
            return events

        tasks = [asyncio.create_task(count_batches()) for _ in range(50)]
        out = await stream.result()
        return out, await asyncio.gather(*tasks), reads_per_wake

    out, results, reads_per_wake = run(main())
    assert all(events == results[0] for events in results)
    assert [e.seq for e in results[0]] == list(range(len(results[0])))
    assert [t for e in results[0] if isinstance(e, CommitEvent) for t in e.token_ids] == _completion(out, prompt_ids)
    # Rounds were held back: on average a subscriber read more than two events per wake-up.
    assert sum(reads_per_wake) == sum(len(events) for events in results)
    assert len(reads_per_wake) < sum(reads_per_wake) / 2


def test_events_held_back_by_the_budget_do_not_count_against_max_queue(tok, model, prompt_ids):
    """A subscriber that reads as fast as it is woken is never a slow consumer, however long a round is held."""

    class PacedDrafter(WrappedDrafter):
        def propose(self, max_tokens):
            time.sleep(0.004)
            return super().propose(max_tokens)

    gen = SpeculativeGenerator(model, PacedDrafter(NGramDrafter(num_draft_tokens=4)))

    async def main():
        hub = StreamHub(fanout_share=1e-4, fanout_max_delay_s=0.2, max_queue=8, overflow="close")
        stream = hub.start(gen, prompt_ids, tokenizer=tok, max_new_tokens=60)

        async def read_all():
            return [event async for event in stream.subscribe()]

        tasks = [asyncio.create_task(read_all()) for _ in range(5)]
        out = await stream.result()
        return out, await asyncio.gather(*tasks)

    out, results = run(main())
    for events in results:
        assert not any(isinstance(e, ErrorEvent) for e in events)
        assert isinstance(events[-1], EndEvent)
        assert [t for e in events if isinstance(e, CommitEvent) for t in e.token_ids] == _completion(out, prompt_ids)


def test_a_stream_that_expires_while_a_round_is_held_back_still_ends_for_its_subscribers(tok, model, prompt_ids):
    """retention_s=0 expires the stream at once; the held-back round must still wake the waiting subscribers."""
    gen = SpeculativeGenerator(model, NGramDrafter(num_draft_tokens=4))

    async def main():
        hub = StreamHub(fanout_share=1e-6, fanout_max_delay_s=0.3, retention_s=0)
        stream = hub.start(gen, prompt_ids, tokenizer=tok, max_new_tokens=30)
        tasks = [asyncio.create_task(_collect(stream.subscribe())) for _ in range(3)]
        out = await stream.result()
        return out, await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)

    out, results = run(main())
    for events in results:
        assert isinstance(events[-1], EndEvent)
        assert [t for e in events if isinstance(e, CommitEvent) for t in e.token_ids] == _completion(out, prompt_ids)
