"""Adapters: transformers streamers, the blocking API, the terminal renderer."""

from __future__ import annotations

import io

import pytest
from transformers import TextIteratorStreamer, TextStreamer

from specdec import SpeculativeGenerator
from specdec.drafts import NGramDrafter
from specdec.streaming import (
    BlockingHub,
    CommitEvent,
    EndEvent,
    ProvisionalEvent,
    StreamHub,
    TerminalRenderer,
    feed_streamer,
    iter_events,
    render_stream,
)
from specdec.streaming.terminal import CLEAR_TO_EOL, DIM, RESTORE_CURSOR, SAVE_CURSOR

from _streaming_fixtures import FakeGenerator, byte_level_tokenizer, run, stream_threads, tiny_llama

PROMPT = "héllo wörld 日本語 🙂 the lazy dog"


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def gen(tok):
    return SpeculativeGenerator(tiny_llama(vocab_size=len(tok), seed=1), NGramDrafter(num_draft_tokens=4))


@pytest.fixture()
def prompt_ids(tok):
    return tok(PROMPT, return_tensors="pt").input_ids


def test_text_streamer_prints_the_completion(tok, gen, prompt_ids, capsys):
    async def main():
        stream = StreamHub().start(gen, prompt_ids, tokenizer=tok, max_new_tokens=30)
        return await feed_streamer(stream, TextStreamer(tok, skip_prompt=True))

    out = run(main())
    completion = tok.decode(out.sequences[0, prompt_ids.shape[1] :], skip_special_tokens=True)
    assert capsys.readouterr().out == completion + "\n"


def test_text_iterator_streamer(tok, gen, prompt_ids):
    streamer = TextIteratorStreamer(tok, skip_prompt=True)

    async def main():
        stream = StreamHub().start(gen, prompt_ids, tokenizer=tok, max_new_tokens=30)
        return await feed_streamer(stream, streamer)

    out = run(main())
    assert "".join(streamer) == tok.decode(out.sequences[0, prompt_ids.shape[1] :], skip_special_tokens=True)


def test_blocking_hub(tok, gen, prompt_ids):
    with BlockingHub() as hub:
        stream = hub.start(gen, prompt_ids, tokenizer=tok, max_new_tokens=25, stream_id="sync-1")
        events = list(stream)
        out = stream.result()
        again = list(hub.get("sync-1").events(after_seq=events[1].seq))
    assert isinstance(events[-1], EndEvent) and again == events[2:]
    ids = [t for e in events if isinstance(e, CommitEvent) for t in e.token_ids]
    assert ids == out.sequences[0, prompt_ids.shape[1] :].tolist()
    assert not stream_threads()


def test_iter_events_and_early_close(tok, gen, prompt_ids):
    events = list(iter_events(gen, prompt_ids, tokenizer=tok, max_new_tokens=10))
    assert events[0].type == "start" and events[-1].type == "end"
    it = iter_events(FakeGenerator(steps=10_000), [1, 2])
    assert next(it).type == "start"
    it.close()  # cancels the generation and stops the loop thread
    assert not stream_threads()


def test_iter_events_raises_after_error_events(tok, gen, prompt_ids):
    seen = []
    with pytest.raises(ValueError, match="max_new_tokens"):
        for event in iter_events(gen, prompt_ids, max_new_tokens=-3):
            seen.append(event.type)
    assert seen == ["start", "error", "end"]


def test_terminal_plain_output_is_the_completion(tok, gen, prompt_ids):
    async def main(file):
        stream = StreamHub().start(gen, prompt_ids, tokenizer=tok, provisional=True, max_new_tokens=30)
        end = await render_stream(stream, file=file, show_drafts=True)
        return end, await stream.result()

    file = io.StringIO()  # not a TTY: no escape codes, drafts not shown
    end, out = run(main(file))
    assert file.getvalue() == end.text == tok.decode(out.sequences[0, prompt_ids.shape[1] :], skip_special_tokens=True)


def test_terminal_draws_and_retracts_drafts():
    file = io.StringIO()
    r = TerminalRenderer(file, show_drafts=True, color=True)
    r.feed(CommitEvent(stream_id="s", seq=1, token_ids=[1], text="Hello", n_committed=1, step=0, drafted=0, accepted=0))
    r.feed(ProvisionalEvent(stream_id="s", seq=2, base=1, token_ids=[2, 3], text=" wor\nld"))
    r.feed(
        CommitEvent(stream_id="s", seq=3, token_ids=[2], text=" world", n_committed=2, step=1, drafted=2, accepted=1)
    )
    assert file.getvalue() == f"Hello{SAVE_CURSOR}{DIM} wor⏎ld\x1b[0m{RESTORE_CURSOR}{CLEAR_TO_EOL} world"
    plain = io.StringIO()
    r = TerminalRenderer(plain, show_drafts=True)  # StringIO is not a TTY
    r.feed(ProvisionalEvent(stream_id="s", seq=2, base=0, token_ids=[2], text="x"))
    assert plain.getvalue() == "" and not r.show_drafts
