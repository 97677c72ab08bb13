"""The HTTP layer's pure parts: request validation and stop strings (no server, no model)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("starlette", reason="the HTTP tests need the http extra: pip install -e '.[dev]'")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from specdec import InvalidArgumentError, SpecDecError  # noqa: E402
from specdec.streaming.http import (  # noqa: E402
    ApiError,
    HttpSettings,
    StopStringCriteria,
    StopTextFilter,
    parse_address,
    parse_request,
)

SETTINGS = HttpSettings(model_name="m", max_tokens_cap=100, default_max_tokens=16)


def _parse(body, chat=False):
    return parse_request(body, chat=chat, settings=SETTINGS)


def _refused(body, chat=False, status=400):
    with pytest.raises(ApiError) as info:
        _parse(body, chat)
    assert info.value.status == status
    error = info.value.body()["error"]
    assert error["message"] and error["type"]
    return error


# --------------------------------------------------------------------------- requests


def test_defaults_follow_openai():
    req = _parse({"prompt": "hi"})
    assert req.max_tokens == 16 and req.temperature == 1.0 and not req.stream and req.stop == ()
    assert req.generate_kwargs() == {"max_new_tokens": 16, "seed": None, "do_sample": True, "temperature": 1.0,
                                     "top_p": None, "top_k": None}  # fmt: skip
    greedy = _parse({"prompt": "hi", "temperature": 0, "max_tokens": 5, "seed": 3})
    assert greedy.generate_kwargs() == {"max_new_tokens": 5, "seed": 3, "do_sample": False}


def test_accepted_shapes():
    assert _parse({"prompt": ["one"]}).prompt == "one"
    assert _parse({"prompt": [1, 2, 3]}).prompt_ids == [1, 2, 3]
    assert _parse({"prompt": [[4, 5]]}).prompt_ids == [4, 5]
    assert _parse({"prompt": "x", "stop": "END"}).stop == ("END",)
    assert _parse({"prompt": "x", "top_k": -1}).top_k is None
    req = _parse({"prompt": "x", "stream": True, "stream_options": {"include_usage": True, "include_drafts": True}})
    assert req.include_usage and req.include_drafts
    chat = _parse({"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                  {"type": "text", "text": "b"}]}],
                   "max_completion_tokens": 7}, chat=True)  # fmt: skip
    assert chat.messages == [{"role": "system", "content": "ab"}] and chat.max_tokens == 7
    # Neutral values of fields we do not implement are fine (clients send them).
    _parse({"prompt": "x", "n": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": None, "echo": False})


@pytest.mark.parametrize(
    "body,param,code",
    [
        ({"prompt": "x", "max_tokens": "10"}, "max_tokens", "invalid_type"),
        ({"prompt": "x", "max_tokens": True}, "max_tokens", "invalid_type"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"prompt": "x", "temperature": -0.1}, "temperature", "invalid_value"),
        ({"prompt": "x", "temperature": float("nan")}, "temperature", "invalid_type"),
        ({"prompt": "x", "top_p": 0}, "top_p", "invalid_value"),
        ({"prompt": "x", "top_k": -5}, "top_k", "invalid_value"),
        ({"prompt": "x", "seed": 1.5}, "seed", "invalid_type"),
        ({"prompt": "x", "n": 3}, "n", "unsupported_value"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"prompt": "x", "stop": [""]}, "stop", "invalid_value"),
        ({"prompt": ["a", "b"]}, "prompt", "unsupported_value"),
        ({"prompt": ""}, "prompt", "invalid_value"),
        ({"prompt": [1, -2]}, "prompt", "invalid_value"),
        ({}, "prompt", "missing_required_parameter"),
        ({"prompt": "x", "best_of": 2}, "best_of", "unsupported_parameter"),
        ({"prompt": "x", "echo": True}, "echo", "unsupported_parameter"),
        ({"prompt": "x", "logit_bias": {"1": 5}}, "logit_bias", "unsupported_parameter"),
        ({"prompt": "x", "messages": []}, "messages", "unknown_parameter"),
        ({"prompt": "x", "stream": True, "stream_options": {"foo": True}}, "stream_options.foo", "unknown_parameter"),
        ({"prompt": "x", "stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage",
         "invalid_type"),
    ],
)  # fmt: skip
def test_completion_errors_name_the_parameter(body, param, code):
    error = _refused(body)
    assert (error["param"], error["code"]) == (param, code)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools"),
        ({"messages": [{"role": "user", "content": "x"}], "prompt": "x"}, "prompt"),
    ],
)
def test_chat_errors_name_the_parameter(body, param):
    assert _refused(body, chat=True)["param"] == param


def test_limits_and_model():
    assert _refused({"prompt": "x", "max_tokens": 101}, status=413)["code"] == "max_tokens_too_large"
    assert _refused({"prompt": "x", "model": "other"}, status=404)["code"] == "model_not_found"
    assert _parse({"prompt": "x", "model": "m"}).prompt == "x"
    assert _refused([1, 2])["code"] == "invalid_type"


def test_settings_are_validated():
    with pytest.raises(InvalidArgumentError):
        HttpSettings(max_open_streams=0)
    with pytest.raises(SpecDecError):
        HttpSettings(default_max_tokens=10, max_tokens_cap=5)
    with pytest.raises(ValueError):
        HttpSettings(retention_s=-1)
    with pytest.raises(TypeError):
        HttpSettings(64)  # keyword-only
    assert parse_address("127.0.0.1:8000") == ("127.0.0.1", 8000)
    assert parse_address("[::1]:0") == ("::1", 0)
    for bad in ("8000", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(InvalidArgumentError):
            parse_address(bad)


# --------------------------------------------------------------------------- stop strings


def _oracle(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


@pytest.mark.parametrize("seed", range(40))
def test_stop_filter_equals_cut_at_first_stop_for_any_split(seed):
    rng = random.Random(seed)
    alphabet = "ab\n é🙂"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
    cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 12))))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=False)]
    filt = StopTextFilter(stops)
    released = []
    for piece in pieces:
        out = filt.push(piece)
        released.append(out)
        # Never release text that a stop string could still claim.
        assert not any(s in "".join(released) for s in stops)
    released.append(filt.flush())
    expected, stopped = _oracle(text, stops)
    assert "".join(released) == expected and filt.stopped == stopped


def test_stop_filter_holds_back_only_possible_stop_prefixes():
    filt = StopTextFilter(["\n\n", "END"])
    assert filt.push("ab\n") == "ab" and filt.held == "\n"
    assert filt.push("cE") == "\nc" and filt.held == "E"
    assert filt.push("Nx") == "ENx" and filt.held == ""
    assert filt.push("yEN") == "y" and filt.push("D tail") == "" and filt.stopped
    assert filt.push("more") == "" and filt.flush() == ""
    assert StopTextFilter([]).push("anything") == "anything"


def test_stop_criteria_fires_on_the_token_completing_the_stop():
    from http_fixtures import tiny_tokenizer

    tok = tiny_tokenizer()
    prompt = tok("the quick")["input_ids"]
    completion = tok(" brown fox jumps over the lazy dog")["input_ids"]
    text = tok.decode(completion, skip_special_tokens=True)
    for stop in ("fox", "x j", "lazy dog", "the", "🙂"):
        criteria = StopStringCriteria(tok, [stop], len(prompt))
        fired = None
        for end in range(1, len(completion) + 1):
            ids = torch.tensor([prompt + completion[:end]])
            if bool(criteria(ids, None)[0]):
                fired = end
                break
        if stop not in text:
            assert fired is None
            continue
        # The first prefix whose decoded text contains the stop string.
        first = next(e for e in range(1, len(completion) + 1) if stop in tok.decode(completion[:e]))
        assert fired == first, stop
    with pytest.raises(ValueError):
        StopStringCriteria(tok, [], 0)
