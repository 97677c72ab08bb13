"""Unit tests for the streaming rooms: the event log, a subscription over a hand-built log, the fan-out
budget, the emitter, the error tree and the finish reasons. No model, no thread: each room alone."""

from __future__ import annotations

import asyncio
import typing

import pytest

import specdec
from specdec import InvalidArgumentError, SpecDecError, SpecOutput, SpecStats, VerifiedBlock
from specdec.streaming import (
    CommitEvent,
    EndEvent,
    ErrorEvent,
    EventDecodeError,
    EventLog,
    FinishReason,
    ProvisionalEvent,
    StartEvent,
    StreamError,
    StreamExpiredError,
    StreamingError,
    Subscription,
    UnknownStreamError,
    Usage,
    event_from_dict,
)
from specdec.streaming._emitter import Emitter, Finish
from specdec.streaming._fanout import FanoutBudget
from specdec.streaming.mqtt import errors as mqtt_errors

from _streaming_fixtures import byte_level_tokenizer, run

SID = "rooms"


def start() -> StartEvent:
    return StartEvent(stream_id=SID, seq=0, model="m", draft="d", prompt_tokens=3, params={})


def commit(seq: int, ids: list[int], n: int) -> CommitEvent:
    return CommitEvent(stream_id=SID, seq=seq, token_ids=ids, text="".join(f"<{i}>" for i in ids),
                       n_committed=n, step=seq, drafted=2, accepted=1)


def provisional(seq: int, base: int) -> ProvisionalEvent:
    return ProvisionalEvent(stream_id=SID, seq=seq, base=base, token_ids=[99], text="?")


def end(seq: int, n: int) -> EndEvent:
    return EndEvent(stream_id=SID, seq=seq, finish_reason="length",
                    usage=Usage(prompt_tokens=3, completion_tokens=n, drafted=0, accepted=0), text="")


# --------------------------------------------------------------------------- the log


def test_event_log_keeps_entries_history_marks_and_waiters():
    async def body():
        log = EventLog(asyncio.get_running_loop())
        log.append(start())
        log.append(provisional(1, 0))
        log.append(commit(2, [5], 1))
        assert [e.seq for e in log.entries] == [0, 1, 2]
        assert [e.seq for e in log.history] == [0, 2]  # provisionals are never replayed
        assert log.history_index_after(None) == 0 and log.history_index_after(0) == 1
        assert [e.seq for e in log.history_after(1)] == [2] and log.last_seq == 2
        assert (log.released, log.overdue) == (0, 0)
        first, second = log.waiter(), log.waiter()
        second.cancel()
        log.forget(second)
        assert log.waiters == [first] and log.has_waiters
        log.mark_released()
        assert (log.released, log.overdue) == (3, 3)
        assert log.wake() == 1 and first.done() and not log.has_waiters
        log.append(commit(3, [6], 2))
        log.mark_released(hold_overdue=True)  # a held-back round: the new entry is not overdue yet
        assert (log.released, log.overdue) == (4, 3)
        log.append(end(4, 2))
        assert log.ended
        with pytest.raises(RuntimeError, match="already ended"):
            log.append(commit(5, [7], 3))
        await asyncio.wait_for(log.wait_beyond(2), 1)  # already beyond: returns at once
        await asyncio.wait_for(log.wait_beyond(99), 1)  # ended: returns at once
        return True

    assert run(body())


def test_wait_beyond_returns_when_a_wake_follows_an_append():
    async def body():
        log = EventLog(asyncio.get_running_loop())
        log.append(start())
        waiting = asyncio.ensure_future(log.wait_beyond(1))
        await asyncio.sleep(0)
        assert not waiting.done()
        log.append(commit(1, [1], 1))
        log.mark_released()
        log.wake()
        await asyncio.wait_for(waiting, 1)
        return True

    assert run(body())


# --------------------------------------------------------------------------- a subscription over a log


def test_subscription_replays_then_reads_live_and_ends():
    async def body():
        log = EventLog(asyncio.get_running_loop())
        for e in (start(), commit(1, [1], 1), provisional(2, 1)):
            log.append(e)
        log.mark_released()
        sub = Subscription(log, SID, log.history_index_after(0), 10, "merge")
        got = [await sub.__anext__()]  # replay: seq 1 (seq 0 is before after_seq, 2 is provisional)

        async def producer():
            await asyncio.sleep(0.01)
            log.append(commit(3, [2], 2))
            log.append(end(4, 2))
            log.mark_released()
            log.wake()

        task = asyncio.ensure_future(producer())
        got += [e async for e in sub]
        await task
        return got, sub

    got, sub = run(body())
    assert [e.seq for e in got] == [1, 3, 4] and sub.last_seq == 4 and sub.closed and not sub.attached


def test_subscription_merge_policy_drops_provisionals_and_merges_commits():
    async def body():
        log = EventLog(asyncio.get_running_loop())
        log.append(start())
        log.mark_released()
        sub = Subscription(log, SID, 0, 2, "merge")
        assert (await sub.__anext__()).seq == 0
        n, seq = 0, 1
        for i in range(6):
            log.append(provisional(seq, n))
            seq += 1
            n += 1
            log.append(commit(seq, [i], n))
            seq += 1
        log.append(end(seq, n))
        log.mark_released()
        rest = [e async for e in sub]
        return rest, sub

    rest, sub = run(body())
    commits = [e for e in rest if isinstance(e, CommitEvent)]
    assert [t for e in commits for t in e.token_ids] == list(range(6))  # no token lost
    assert "".join(e.text for e in commits) == "".join(f"<{i}>" for i in range(6))
    assert sub.dropped == 6 and sub.merged == 5 and len(commits) == 1
    assert commits[0].n_committed == 6 and commits[0].drafted == 12 and isinstance(rest[-1], EndEvent)


def test_subscription_close_policy_ends_with_a_slow_consumer_error():
    async def body():
        log = EventLog(asyncio.get_running_loop())
        log.append(start())
        sub = Subscription(log, SID, 0, 2, "close")
        assert (await sub.__anext__()).seq == 0
        for i in range(1, 6):
            log.append(commit(i, [i], i))
        log.mark_released()
        return [e async for e in sub], sub

    rest, sub = run(body())
    assert len(rest) == 1 and isinstance(rest[0], ErrorEvent)
    assert rest[0].code == "slow_consumer" and rest[0].seq == -1 and rest[0].retryable
    assert sub.last_seq == 0 and sub.closed


# --------------------------------------------------------------------------- the fan-out budget


def test_fanout_budget_without_a_share_wakes_at_once():
    async def body():
        log = EventLog(asyncio.get_running_loop())
        budget = FanoutBudget(log)
        waiter = log.waiter()
        log.append(start())
        budget.request_round()
        return waiter.done(), log.released, log.overdue, budget.rounds

    assert run(body()) == (True, 1, 1, 1)


def test_fanout_budget_holds_rounds_back_within_its_share_and_max_delay():
    async def body():
        loop = asyncio.get_running_loop()
        log = EventLog(loop)
        budget = FanoutBudget(log, share=1e-6, max_delay_s=0.05)  # any round costs more than the share allows
        first = log.waiter()
        log.append(start())
        budget.request_round()
        assert first.done() and budget.rounds == 1  # the first round runs at once
        await asyncio.sleep(0)  # its cost is measured after the woken readers' first steps
        second = log.waiter()
        log.append(commit(1, [1], 1))
        budget.request_round()
        held_at = loop.time()
        assert not second.done() and log.released == 1  # held back: the next round is due later
        await asyncio.wait_for(second, 1)
        waited = loop.time() - held_at
        return waited, log.released, log.overdue

    waited, released, overdue = run(body())
    assert 0.02 < waited < 0.5  # about max_delay_s, never more than a few times it
    assert released == 2 and overdue == 1  # the held-back event does not count against max_queue


def test_fanout_budget_is_validated():
    async def body():
        log = EventLog(asyncio.get_running_loop())
        for bad in (0, 1.5, True, "0.1"):
            with pytest.raises(InvalidArgumentError, match="fanout_share"):
                FanoutBudget(log, share=bad)
        with pytest.raises(InvalidArgumentError, match="fanout_max_delay_s"):
            FanoutBudget(log, share=0.1, max_delay_s=0)
        return True

    assert run(body())


# --------------------------------------------------------------------------- the emitter


def test_emitter_turns_sink_calls_into_numbered_events():
    tok = byte_level_tokenizer()
    ids = tok("héllo wörld")["input_ids"]
    posted: list = []
    emitter = Emitter(SID, tok, True, posted.append)
    emitter.on_draft(0, ids[:2])
    emitter.on_block(VerifiedBlock(step=0, row=0, token_ids=tuple(ids[:2]), drafted=2, accepted=2))
    emitter.on_block(VerifiedBlock(step=1, row=0, token_ids=tuple(ids[2:]), drafted=3, accepted=1))
    import torch

    out = SpecOutput(sequences=torch.tensor([ids]), stats=SpecStats(prompt_tokens=4, drafted=5, accepted=3),
                     finish_reason="length")
    emitter.finish(out, None, 4)
    events, finish = posted[:-1], posted[-1]
    assert isinstance(finish, Finish) and finish.output is out and finish.exc is None
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # seq 0 is the hub's start event
    assert isinstance(events[0], ProvisionalEvent) and events[0].base == 0
    commits = [e for e in events if isinstance(e, CommitEvent)]
    assert [t for e in commits for t in e.token_ids] == ids
    assert [(e.drafted, e.accepted) for e in commits if e.token_ids] == [(2, 2), (3, 1)]
    assert "".join(e.text for e in commits) == tok.decode(ids) == events[-1].text
    assert isinstance(events[-1], EndEvent) and events[-1].usage.completion_tokens == len(ids)


def test_emitter_reports_a_failure_as_error_then_end():
    posted: list = []
    emitter = Emitter(SID, None, False, posted.append)
    emitter.on_draft(0, [1])  # provisional=False: nothing
    emitter.finish(None, ValueError("bad k"), 3)
    error, last, finish = posted
    assert isinstance(error, ErrorEvent) and error.code == "bad_request" and "bad k" in error.message
    assert isinstance(last, EndEvent) and last.finish_reason == "error" and last.seq == error.seq + 1
    assert isinstance(finish, Finish) and isinstance(finish.exc, ValueError)


# --------------------------------------------------------------------------- errors and finish reasons


def test_one_error_tree_under_specdec_error():
    assert issubclass(StreamingError, SpecDecError)
    assert issubclass(EventDecodeError, StreamingError) and issubclass(EventDecodeError, ValueError)
    assert issubclass(StreamExpiredError, UnknownStreamError) and issubclass(UnknownStreamError, KeyError)
    assert issubclass(UnknownStreamError, StreamError)
    assert mqtt_errors.StreamError is StreamError  # one StreamError, in-process and over MQTT
    for cls in (mqtt_errors.WorkerLostError, mqtt_errors.StreamGapError, mqtt_errors.NoWorkerError):
        assert issubclass(cls, StreamError)
    for cls in (mqtt_errors.TransportError, mqtt_errors.BadRequestError, mqtt_errors.BrokerUnreachableError,
                mqtt_errors.ConnectionLostError):
        assert issubclass(cls, mqtt_errors.MqttLayerError) and issubclass(cls, StreamingError)
    error = mqtt_errors.WorkerLostError("gone", retryable=True, stream_id="s")
    assert (error.code, error.message, error.retryable, str(error)) == (
        "worker_lost", "gone", True, "[worker_lost] gone"
    )
    with pytest.raises(EventDecodeError):
        event_from_dict({"v": 1, "type": "nope"})


def test_finish_reason_is_the_core_s_plus_error():
    core = typing.get_args(specdec.FinishReason)
    assert typing.get_args(FinishReason) == (*core, "error")
