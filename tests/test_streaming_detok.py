"""Incremental detokenization: joined deltas equal tokenizer.decode, for any split of the ids."""

from __future__ import annotations

import random

import pytest

from specdec.streaming import DecodeStreamDetokenizer, OffsetDetokenizer, make_detokenizer

from _streaming_fixtures import CORPUS, byte_level_tokenizer, metaspace_tokenizer

TOKENIZERS = {"byte_level": byte_level_tokenizer, "metaspace": metaspace_tokenizer}


def stream_text(detok, ids, rng):
    out, i = [], 0
    while i < len(ids):
        n = rng.randrange(1, 5)
        out.append(detok.step(ids[i : i + n]))
        i += n
    return out, detok.flush()


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("decode_stream", [True, False])
def test_joined_deltas_equal_decode(name, decode_stream):
    tok = TOKENIZERS[name]()
    detok = make_detokenizer(tok, prefer_decode_stream=decode_stream)
    assert isinstance(detok, DecodeStreamDetokenizer if decode_stream else OffsetDetokenizer)
    rng = random.Random(1234)
    for trial in range(400):
        if trial % 2:  # real text
            ids = tok.encode(rng.choice(CORPUS) + " " + rng.choice(CORPUS))
        else:  # what a random model emits: any ids, invalid UTF-8 and special tokens included
            ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 40))]
        chunks, tail = stream_text(make_detokenizer(tok, prefer_decode_stream=decode_stream), ids, rng)
        assert "".join(chunks) + tail == tok.decode(ids, skip_special_tokens=True), ids


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("decode_stream", [True, False])
def test_multibyte_characters_split_across_tokens_come_out_whole(name, decode_stream):
    tok = TOKENIZERS[name]()
    text = "héllo wörld 日本語 🙂"
    ids = tok.encode(text)
    # The tokenizer really splits a character: some token alone does not decode to clean text.
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    detok = make_detokenizer(tok, prefer_decode_stream=decode_stream)
    deltas = [detok.step([i]) for i in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)
    assert any("🙂" in d for d in deltas)  # emitted whole, never byte by byte
    if name == "byte_level":
        assert "🙂" in deltas[-2]  # as soon as its last byte arrives
    else:
        # A run of byte-fallback tokens is decoded once a normal token (or the end) closes it.
        assert "🙂" in deltas[-1]


def test_sentencepiece_leading_spaces():
    tok = metaspace_tokenizer()
    ids = tok.encode("the lazy dog")
    detok = make_detokenizer(tok)
    deltas = [detok.step([i]) for i in ids]
    assert deltas[0] == "the" and "".join(deltas) == "the lazy dog"
    assert all(d.startswith(" ") for d in deltas[1:] if d)


def test_peek_shows_draft_text_without_consuming():
    tok = byte_level_tokenizer()
    ids = tok.encode("héllo wörld 日本語 🙂")
    detok = make_detokenizer(tok)
    detok.step(ids[:2])
    assert detok.peek(ids[2:]) == tok.decode(ids)[len(tok.decode(ids[:2])) :]
    assert "".join([tok.decode(ids[:2]), detok.step(ids[2:]), detok.flush()]) == tok.decode(ids)


def test_no_tokenizer_means_no_text():
    detok = make_detokenizer(None)
    assert detok.step([1, 2]) == detok.peek([3]) == detok.flush() == ""
