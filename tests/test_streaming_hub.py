"""StreamHub: every subscriber gets each verified token, in order, with nothing lost."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
import torch

from specdec import InvalidArgumentError, SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.streaming import (
    CommitEvent,
    EndEvent,
    ErrorEvent,
    ProvisionalEvent,
    StartEvent,
    StreamExpiredError,
    StreamHub,
    UnknownStreamError,
)

from _streaming_fixtures import (
    FakeGenerator,
    WrappedDrafter,
    byte_level_tokenizer,
    run,
    stream_threads,
    tiny_llama,
)

PROMPT = "héllo wörld 日本語 🙂 the lazy dog héllo"


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llama(vocab_size=len(tok), seed=0)


@pytest.fixture()
def prompt_ids(tok):
    return tok(PROMPT, return_tensors="pt").input_ids


def completion(out, prompt_ids):
    return out.sequences[0, prompt_ids.shape[1] :].tolist()


def commits(events):
    return [e for e in events if isinstance(e, CommitEvent)]


def assert_well_formed(events, *, first_seq=0):
    """start first (when replaying from 0), seq gap-free, exactly one end, last."""
    assert [e.seq for e in events] == list(range(first_seq, first_seq + len(events)))
    if first_seq == 0:
        assert isinstance(events[0], StartEvent)
    assert isinstance(events[-1], EndEvent)
    assert sum(isinstance(e, EndEvent) for e in events) == 1
    cs = commits(events)
    n = cs[0].n_committed - len(cs[0].token_ids) if cs else 0
    for e in cs:
        n += len(e.token_ids)
        assert e.n_committed == n


def test_three_subscribers_late_and_slow_get_the_same_tokens(tok, model, prompt_ids):
    drafter = WrappedDrafter(NGramDrafter(num_draft_tokens=4), pause_at=4)
    gen = SpeculativeGenerator(model, drafter)

    async def main():
        hub = StreamHub()
        stream = hub.start(gen, prompt_ids, tokenizer=tok, max_new_tokens=48, stream_id="three-subs")
        assert hub.get("three-subs") is stream

        async def collect(sub, delay=0.0):
            events = []
            async for event in sub:
                events.append(event)
                if delay:
                    await asyncio.sleep(delay)
            return events

        fast = asyncio.create_task(collect(stream.subscribe()))
        slow = asyncio.create_task(collect(stream.subscribe(), delay=0.003))
        # Join mid-stream: generation is held at its 5th step until the late subscriber is in.
        while not drafter.paused.is_set():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.01)  # let the events of the first steps reach the loop
        assert not stream.done and len(commits(stream.history)) >= 4
        late = asyncio.create_task(collect(stream.subscribe()))
        resumed = asyncio.create_task(collect(stream.subscribe(after_seq=2)))
        drafter.resume.set()
        out = await stream.result()
        return out, await fast, await slow, await late, await resumed

    out, fast, slow, late, resumed = run(main())
    expected_ids = completion(out, prompt_ids)
    expected_text = tok.decode(expected_ids, skip_special_tokens=True)
    assert len(expected_ids) == 48
    for events in (fast, slow, late):
        assert_well_formed(events)
        assert [t for e in commits(events) for t in e.token_ids] == expected_ids
        assert "".join(e.text for e in commits(events)) == expected_text
        assert events[-1].text == expected_text
        assert events[-1].finish_reason == out.finish_reason == "length"
        usage = events[-1].usage
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_ids.shape[1], 48)
        assert (usage.drafted, usage.accepted) == (out.stats.drafted, out.stats.accepted)
        assert sum(e.drafted for e in commits(events)) == out.stats.drafted
        assert sum(e.accepted for e in commits(events)) == out.stats.accepted
    assert fast == slow == late
    assert resumed == fast[3:]
    assert_well_formed(resumed, first_seq=3)
    # The stream's own output is the plain generate's.
    plain = SpeculativeGenerator(model, NGramDrafter(num_draft_tokens=4)).generate(prompt_ids, max_new_tokens=48)
    assert torch.equal(plain.sequences, out.sequences)
    assert not stream_threads()


def test_start_event_describes_the_generation(tok, model, prompt_ids):
    gen = SpeculativeGenerator(model, NGramDrafter())

    async def main():
        stream = StreamHub().start(gen, prompt_ids, tokenizer=tok, max_new_tokens=5, do_sample=False)
        events = [e async for e in stream.subscribe()]
        await stream.result()
        return events

    start = run(main())[0]
    assert isinstance(start, StartEvent) and start.seq == 0 and start.v == 1
    assert start.draft == "NGramDrafter" and start.prompt_tokens == prompt_ids.shape[1]
    assert start.params == {"max_new_tokens": 5, "do_sample": False, "provisional": False}


def test_cancel_stops_within_one_step(tok, model, prompt_ids):
    drafter = WrappedDrafter(NGramDrafter(num_draft_tokens=2))
    gen = SpeculativeGenerator(model, drafter)

    async def main():
        hub = StreamHub()
        stream = hub.start(gen, prompt_ids, tokenizer=tok, max_new_tokens=400)
        sub = stream.subscribe()
        events = []
        async for event in sub:
            events.append(event)
            if len(commits(events)) == 2:
                proposals_at_cancel = drafter.proposals
                await stream.cancel()
                break
        rest = [e async for e in stream.subscribe(after_seq=events[-1].seq)]
        return proposals_at_cancel, events + rest, await stream.result()

    proposals_at_cancel, events, out = run(main())
    assert drafter.proposals <= proposals_at_cancel + 1
    assert out.finish_reason == "cancelled" and events[-1].finish_reason == "cancelled"
    assert_well_formed(events)
    assert [t for e in commits(events) for t in e.token_ids] == completion(out, prompt_ids)
    assert len(completion(out, prompt_ids)) < 400
    assert not stream_threads()


def test_injected_failure_reaches_every_subscriber(tok, model, prompt_ids):
    gen = SpeculativeGenerator(model, WrappedDrafter(NGramDrafter(num_draft_tokens=3), fail_at=3))

    async def main():
        stream = StreamHub().start(gen, prompt_ids, tokenizer=tok, max_new_tokens=40)
        subs = [stream.subscribe() for _ in range(3)]
        results = await asyncio.gather(*[_collect(sub) for sub in subs])
        with pytest.raises(RuntimeError, match="exploded on purpose"):
            await stream.result()
        late = await _collect(stream.subscribe())  # replayed history shows the failure too
        return results + [late]

    for events in run(main()):
        assert_well_formed(events)
        error, end = events[-2], events[-1]
        assert isinstance(error, ErrorEvent) and error.code == "internal" and not error.retryable
        assert "exploded on purpose" in error.message
        assert end.finish_reason == "error"
        assert end.usage.completion_tokens == sum(len(e.token_ids) for e in commits(events)) > 0
        assert end.text == "".join(e.text for e in commits(events))
    assert not stream_threads()


def test_bad_generation_arguments_are_bad_request(tok, model, prompt_ids):
    gen = SpeculativeGenerator(model, NGramDrafter())

    async def main():
        stream = StreamHub().start(gen, prompt_ids, tokenizer=tok, max_new_tokens=0)
        events = await _collect(stream.subscribe())
        with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
            await stream.result()
        return events

    events = run(main())
    assert [type(e) for e in events] == [StartEvent, ErrorEvent, EndEvent]
    assert events[1].code == "bad_request" and events[2].finish_reason == "error"


def test_provisional_events_are_superseded_by_commits(tok, model, prompt_ids):
    async def main(provisional):
        gen = SpeculativeGenerator(model, NGramDrafter(num_draft_tokens=4))
        stream = StreamHub().start(gen, prompt_ids, tokenizer=tok, provisional=provisional, max_new_tokens=48)
        events = await _collect(stream.subscribe())
        return events, await stream.result()

    events, out = run(main(True))
    plain_events, plain_out = run(main(False))
    provisionals = [e for e in events if isinstance(e, ProvisionalEvent)]
    assert provisionals, "the n-gram drafter should have drafted something"
    assert [e.seq for e in events] == list(range(len(events)))
    n_committed, pending = 0, None
    for event in events:
        if isinstance(event, ProvisionalEvent):
            assert pending is None, "two provisionals without a commit between them"
            assert event.base == n_committed and event.token_ids
            pending = event
        elif isinstance(event, CommitEvent):
            if pending is not None:
                assert event.drafted == len(pending.token_ids)
                assert event.token_ids[: event.accepted] == pending.token_ids[: event.accepted]
            pending = None
            n_committed = event.n_committed
        elif isinstance(event, EndEvent):
            assert pending is None, "a provisional was never superseded"
    # Committed tokens and text never depend on provisionals.
    assert commits(events) != [] and torch.equal(out.sequences, plain_out.sequences)
    strip = [(e.token_ids, e.text, e.n_committed) for e in commits(events)]
    assert strip == [(e.token_ids, e.text, e.n_committed) for e in commits(plain_events)]
    # Provisionals are never replayed.
    assert not any(isinstance(e, ProvisionalEvent) for e in run(_replay(model, tok, prompt_ids)))


async def _replay(model, tok, prompt_ids):
    gen = SpeculativeGenerator(model, NGramDrafter(num_draft_tokens=4))
    stream = StreamHub().start(gen, prompt_ids, tokenizer=tok, provisional=True, max_new_tokens=20)
    await stream.result()
    return await _collect(stream.subscribe())


async def _collect(sub):
    return [event async for event in sub]


# --------------------------------------------------------------------------- overflow policies


def test_merge_policy_loses_no_token():
    async def main():
        hub = StreamHub(max_queue=4)
        stream = hub.start(FakeGenerator(steps=60), [1, 2, 3], provisional=True)
        lagging = stream.subscribe()
        keeping_up = stream.subscribe(max_queue=10_000)
        await stream.result()  # everything is queued (and merged) before anyone reads
        return await _collect(lagging), lagging, await _collect(keeping_up)

    events, sub, full = run(main())
    assert sub.merged > 0 and sub.dropped > 0
    assert [t for e in commits(events) for t in e.token_ids] == [i % 50 for i in range(60)]
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)) and isinstance(events[-1], EndEvent)
    assert [e.n_committed for e in commits(events)][-1] == 60
    assert len(events) <= 1 + 4  # start (history) + at most max_queue live events
    assert [e.seq for e in full] == list(range(len(full))) and len(commits(full)) == 60


def test_close_policy_closes_only_the_slow_subscriber():
    async def main():
        hub = StreamHub(max_queue=4, overflow="close")
        stream = hub.start(FakeGenerator(steps=30), [1, 2, 3])
        slow = stream.subscribe()
        fine = stream.subscribe(max_queue=100)
        await stream.result()
        slow_events = await _collect(slow)
        # The slow one resumes where it stopped.
        resumed = await _collect(stream.subscribe(after_seq=slow.last_seq))
        return slow_events, slow.last_seq, resumed, await _collect(fine)

    slow_events, last_seq, resumed, fine = run(main())
    assert isinstance(slow_events[-1], ErrorEvent) and slow_events[-1].code == "slow_consumer"
    assert slow_events[-1].seq == -1 and slow_events[-1].retryable
    assert last_seq == 0 and [e.seq for e in resumed] == list(range(1, 32))
    assert len(commits(fine)) == 30 and isinstance(fine[-1], EndEvent)


def test_merge_policy_closes_when_merging_cannot_help():
    async def main():
        stream = StreamHub(max_queue=1).start(FakeGenerator(steps=5), [1])
        sub = stream.subscribe()
        await stream.result()
        return await _collect(sub)

    events = run(main())
    assert isinstance(events[0], StartEvent)
    assert isinstance(events[-1], ErrorEvent) and events[-1].code == "slow_consumer"


# --------------------------------------------------------------------------- bad input and lifetime


def test_bad_input_errors(tok, model, prompt_ids):
    gen = SpeculativeGenerator(model, NGramDrafter())

    async def main():
        hub = StreamHub(retention_s=0)
        with pytest.raises(UnknownStreamError, match="no stream"):
            hub.get("nope")
        with pytest.raises(KeyError):
            hub.get("nope")
        with pytest.raises(InvalidArgumentError, match="SpeculativeGenerator"):
            hub.start(object(), prompt_ids)
        with pytest.raises(InvalidArgumentError, match="stream_id"):
            hub.start(gen, prompt_ids, stream_id="bad id!")
        with pytest.raises(InvalidArgumentError, match="cancel"):
            hub.start(gen, prompt_ids, cancel=None)
        with pytest.raises(InvalidArgumentError, match="provisional"):
            hub.start(gen, prompt_ids, provisional="yes")
        stream = hub.start(gen, prompt_ids, tokenizer=tok, max_new_tokens=4, stream_id="s1")
        with pytest.raises(InvalidArgumentError, match="already in use"):
            hub.start(gen, prompt_ids, stream_id="s1")
        with pytest.raises(InvalidArgumentError, match="after_seq"):
            stream.subscribe(after_seq=-1)
        with pytest.raises(InvalidArgumentError, match="after_seq"):
            stream.subscribe(after_seq="3")
        with pytest.raises(InvalidArgumentError, match="beyond"):
            stream.subscribe(after_seq=10_000)
        await stream.result()
        await asyncio.sleep(0.01)  # retention 0: expires on the loop's next turn
        with pytest.raises(StreamExpiredError, match="expired"):
            stream.subscribe()
        with pytest.raises(StreamExpiredError):
            hub.get("s1")
        assert hub.stream_ids == []

    run(main())
    with pytest.raises(RuntimeError, match="event loop"):
        StreamHub().start(gen, prompt_ids)
    with pytest.raises(InvalidArgumentError):
        StreamHub(overflow="drop-everything")
    with pytest.raises(InvalidArgumentError):
        StreamHub(max_queue=0)


def test_nothing_leaks(tok, model, prompt_ids):
    gen = SpeculativeGenerator(model, NGramDrafter())
    threads_before = set(stream_threads())

    async def main():
        hub = StreamHub(retention_s=0.05)
        stream = hub.start(gen, prompt_ids, tokenizer=tok, max_new_tokens=30)
        assert stream_threads()
        # A subscriber that leaves early, one that is cancelled, one that reads to the end.
        quitter = stream.subscribe()
        async for event in quitter:
            if isinstance(event, CommitEvent):
                break
        quitter_ref = weakref.ref(quitter)
        del quitter
        gc.collect()
        assert quitter_ref() is None

        async def forever():
            async for _ in stream.subscribe():
                await asyncio.sleep(10)

        task = asyncio.create_task(forever())
        await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gc.collect()
        reader = await _collect(stream.subscribe())
        await stream.result()
        assert stream.subscriber_count == 0
        assert isinstance(reader[-1], EndEvent)
        await asyncio.sleep(0.1)  # past retention
        assert hub.stream_ids == [] and stream.expired
        assert asyncio.all_tasks() == {asyncio.current_task()}
        stream_ref = weakref.ref(stream)
        return stream_ref

    stream_ref = run(main())
    gc.collect()
    assert set(stream_threads()) == threads_before == set()
    assert stream_ref() is None


def test_hub_close_cancels_running_streams(tok, model, prompt_ids):
    gen = SpeculativeGenerator(model, NGramDrafter())

    async def main():
        async with StreamHub() as hub:
            stream = hub.start(gen, prompt_ids, max_new_tokens=400)
            first = stream.subscribe()
            await first.__anext__()
        events = await _collect(first)
        return events, await stream.result()

    events, out = run(main())
    assert out.finish_reason == "cancelled" and events[-1].finish_reason == "cancelled"
    assert not stream_threads()


def test_streams_on_one_generator_run_one_after_another(tok, model, prompt_ids):
    gen = SpeculativeGenerator(model, NGramDrafter())
    reference = gen.generate(prompt_ids, max_new_tokens=20)

    async def main():
        hub = StreamHub()
        streams = [hub.start(gen, prompt_ids, tokenizer=tok, max_new_tokens=20) for _ in range(3)]
        return [await s.result() for s in streams]

    for out in run(main()):
        assert torch.equal(out.sequences, reference.sequences)
