"""Request / control parsing (wire protocol v1), with a fuzzer: the parser only ever raises BadRequestError."""

from __future__ import annotations

import json
import random

import pytest

from specdec.streaming.events import (
    STREAM_ID_PATTERN,
    CommitEvent,
    EndEvent,
    ErrorEvent,
    ProvisionalEvent,
    StartEvent,
    Usage,
    event_to_dict,
)
from specdec.streaming.mqtt.errors import BadRequestError
from specdec.streaming.mqtt.protocol import (
    RequestLimits,
    control_topic,
    decode_event,
    encode_event,
    events_topic,
    parse_control,
    parse_request,
    stream_id_from_topic,
)
from specdec.streaming.mqtt.transport import BrokerConfig

LIMITS = RequestLimits(max_new_tokens_cap=100, max_prompt_chars=1000, max_prompt_tokens=50, max_payload_bytes=20_000)


def req(**fields) -> bytes:
    return json.dumps({"stream_id": "s1", "prompt": "hi", **fields}).encode()


def test_valid_request_round_trip():
    r = parse_request(req(max_new_tokens=7, do_sample=True, temperature=0.7, top_p=0.9, top_k=5, seed=3), LIMITS)
    assert r.stream_id == "s1" and r.prompt == "hi" and r.max_new_tokens == 7
    assert r.generate_kwargs() == {
        "max_new_tokens": 7, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 3,
    }
    assert parse_request(json.dumps({"stream_id": "a-b_C", "input_ids": [1, 2]}), LIMITS).input_ids == [1, 2]
    m = parse_request(json.dumps({"stream_id": "x", "messages": [{"role": "user", "content": "yo"}]}), LIMITS)
    assert m.messages == [{"role": "user", "content": "yo"}]
    assert parse_request(req(), LIMITS).max_new_tokens == 100  # default, capped


@pytest.mark.parametrize(
    "payload, stream_id, fragment",
    [
        (b"{not json", None, "not valid UTF-8 JSON"),
        (b"\xff\xfe", None, "not valid UTF-8 JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"prompt": "x"}', None, "lacks `stream_id`"),
        (json.dumps({"stream_id": "bad id!", "prompt": "x"}).encode(), None, "stream_id must match"),
        (json.dumps({"stream_id": "x" * 65, "prompt": "x"}).encode(), None, "stream_id must match"),
        (json.dumps({"stream_id": 5, "prompt": "x"}).encode(), None, "stream_id must match"),
        (json.dumps({"stream_id": "s1"}).encode(), "s1", "exactly one of"),
        (req(input_ids=[1]), "s1", "exactly one of"),
        (req(prompt=""), "s1", "non-empty string"),
        (req(prompt=5), "s1", "non-empty string"),
        (req(prompt="x" * 1001), "s1", "limit is 1000"),
        (req(max_new_tokens=101), "s1", "above this worker's cap"),
        (req(max_new_tokens=0), "s1", ">= 1"),
        (req(max_new_tokens="5"), "s1", "integer"),
        (req(max_new_tokens=True), "s1", "integer"),
        (req(do_sample="yes"), "s1", "true or false"),
        (req(temperature=0), "s1", "temperature"),
        (req(top_p=1.5), "s1", "top_p"),
        (req(top_k=-1), "s1", "top_k"),
        (req(seed=-3), "s1", "seed"),
        (req(max_tokens=5), "s1", "unknown request fields"),
        (req(v=2), "s1", "version"),
        (b'{"stream_id": "s1", "prompt": "x", "temperature": NaN}', "s1", "not valid"),
        (b'{"stream_id": "s1", "prompt": "x", "temperature": Infinity}', "s1", "not valid"),
        (req(temperature=1e-300), "s1", "temperature"),
        (req(temperature=float("1e-310")), "s1", "temperature"),
        (req(v=True), "s1", "integer 1"),
        (req(v=1.0), "s1", "integer 1"),
        (req(token="short"), "s1", "token"),
        (req(prompt="a\x00b"), "s1", "control characters"),
        (req(prompt="a\x1b[2Jb"), "s1", "control characters"),
        (b'{"prompt": "x", "stream_id": "s1", "temperature": NaN', "s1", "not valid"),
        (json.dumps({"stream_id": "s1", "input_ids": [1, -2]}).encode(), "s1", "non-negative"),
        (json.dumps({"stream_id": "s1", "input_ids": list(range(51))}).encode(), "s1", "limit is 50"),
        (json.dumps({"stream_id": "s1", "messages": [{"role": "user"}]}).encode(), "s1", "messages[0]"),
        (json.dumps({"stream_id": "s1", "prompt": "x" * 30_000}).encode(), "s1", "limit is 20000"),
        (json.dumps({"prompt": "x" * 30_000, "stream_id": "s1"}).encode(), None, "limit is 20000"),  # beyond the prefix
        (json.dumps({"prompt": 'say "stream_id": "victim"', "x": "x" * 30_000}).encode(), None, "limit"),
        (b"[" * 19_000, None, "not valid"),
    ],
)
def test_bad_requests(payload, stream_id, fragment):
    with pytest.raises(BadRequestError) as info:
        parse_request(payload, LIMITS)
    assert info.value.stream_id == stream_id
    assert fragment in str(info.value)


def test_control_characters_policy_and_tokens():
    assert parse_request(req(prompt="line\nnext\tcol\r\n"), LIMITS).prompt == "line\nnext\tcol\r\n"
    strip = RequestLimits(control_characters="strip")
    assert parse_request(req(prompt="a\x00b\x1bc\x7f\u0085d"), strip).prompt == "abcd"
    chat = json.dumps({"stream_id": "s1", "messages": [{"role": "user", "content": "x\x07y"}]})
    assert parse_request(chat, strip).messages == [{"role": "user", "content": "xy"}]
    with pytest.raises(BadRequestError, match="empty once"):
        parse_request(req(prompt="\x00\x01"), strip)
    assert parse_request(req(prompt="a\x00b"), RequestLimits(control_characters="keep")).prompt == "a\x00b"
    with pytest.raises(ValueError):
        RequestLimits(control_characters="drop")
    token = "t" * 16
    assert parse_request(req(token=token), LIMITS).token == token
    assert parse_request(req(), LIMITS).token is None
    assert parse_control(json.dumps({"type": "cancel", "token": token})).token == token
    assert parse_control(b'{"type": "cancel"}').token is None
    with pytest.raises(BadRequestError):
        parse_control(b'{"type": "cancel", "token": 5}')


def test_queued_notice_round_trip():
    from specdec.streaming.mqtt import QueuedEvent
    from specdec.streaming.mqtt.protocol import encode_queued

    event = decode_event(encode_queued(QueuedEvent(stream_id="s1", position=3)))
    assert isinstance(event, QueuedEvent) and (event.position, event.seq, event.type) == (3, -1, "queued")


def test_control_messages():
    assert parse_control(b'{"type": "cancel"}').type == "cancel"
    assert parse_control(b'{"type": "resume", "after_seq": 4}').after_seq == 4
    assert parse_control(b'{"type": "resume"}').after_seq == -1
    for bad in (b"", b"[]", b'{"type": "stop"}', b'{"type": "resume", "after_seq": -2}',
                b'{"type": "resume", "after_seq": "3"}', b"\x00" * 5000):
        with pytest.raises(BadRequestError):
            parse_control(bad)


def test_topics_and_events():
    assert events_topic("ab") == "specdec/v1/streams/ab/events"
    assert stream_id_from_topic(control_topic("ab")) == "ab"
    assert stream_id_from_topic("specdec/v1/streams/a b/events") is None
    assert stream_id_from_topic("other/v1/streams/ab/events") is None
    ev = ErrorEvent(stream_id="ab", seq=-1, code="worker_lost", message="m", retryable=True)
    assert decode_event(encode_event(ev)) == ev


def test_event_encoding_matches_the_schema_dicts():
    """The worker's fast encoder writes exactly the bytes of ``json.dumps(event_to_dict(event))``."""
    events = [
        StartEvent(stream_id="s", seq=0, model="m", draft="ngram", prompt_tokens=3,
                   params={"max_new_tokens": 8, "temperature": 0.5, "stop": ["a", "é"]}),
        CommitEvent(stream_id="s", seq=1, token_ids=[1, 2, 3], text="héllo 🙂", n_committed=3, step=0,
                    drafted=4, accepted=2),
        ProvisionalEvent(stream_id="s", seq=2, base=3, token_ids=[], text=""),
        ErrorEvent(stream_id="s", seq=3, code="internal", message='a "quoted"\nline', retryable=False),
        EndEvent(stream_id="s", seq=4, finish_reason="length",
                 usage=Usage(prompt_tokens=3, completion_tokens=3, drafted=4, accepted=2), text="héllo 🙂"),
    ]
    for ev in events:
        expected = json.dumps(event_to_dict(ev), separators=(",", ":"), ensure_ascii=False).encode()
        assert encode_event(ev) == expected
        assert decode_event(encode_event(ev)) == ev


def test_broker_urls():
    c = BrokerConfig.from_url("mqtt://127.0.0.1:1999")
    assert (c.host, c.port, c.tls) == ("127.0.0.1", 1999, False)
    c = BrokerConfig.from_url("mqtts://u:p@example.org", tls_ca="/ca.pem")
    assert (c.port, c.tls, c.username, c.password) == (8883, True, "u", "p")
    for bad in ("127.0.0.1:1883", "http://x", "mqtt://"):
        with pytest.raises(ValueError):
            BrokerConfig.from_url(bad)


def _mutations(rng: random.Random):
    base = {"stream_id": "s1", "prompt": "hi", "max_new_tokens": 5, "seed": 1}
    values = [None, True, False, 0, -1, 2**70, 1.5, float("inf"), "", "x" * 3000, [], [1, "a"], {}, {"a": 1},
              [{"role": 1, "content": 2}], "s1", ["x"] * 600, 1e308]
    keys = list(base) + ["input_ids", "messages", "temperature", "top_p", "top_k", "do_sample", "provisional", "v",
                         "zzz", ""]
    for _ in range(3000):
        data = dict(base)
        for _ in range(rng.randint(1, 4)):
            key = rng.choice(keys)
            if rng.random() < 0.2:
                data.pop(key, None)
            else:
                data[key] = rng.choice(values)
        text = json.dumps(data, allow_nan=True)
        if rng.random() < 0.3 and text:
            cut = rng.randrange(len(text))
            text = text[:cut] + rng.choice(["", "}", "\x00", "\\", '"', "é", "\ud800"]) + text[cut + 1 :]
        yield text.encode("utf-8", "surrogatepass")
    for _ in range(1000):
        yield bytes(rng.randrange(256) for _ in range(rng.randrange(64)))


def test_fuzz_request_parser_only_raises_bad_request():
    rng = random.Random(1234)
    accepted = 0
    for payload in _mutations(rng):
        try:
            r = parse_request(payload, LIMITS)
        except BadRequestError as exc:
            assert exc.stream_id is None or STREAM_ID_PATTERN.fullmatch(exc.stream_id)
            continue
        accepted += 1
        assert 1 <= r.max_new_tokens <= LIMITS.max_new_tokens_cap
        assert sum(x is not None for x in (r.prompt, r.messages, r.input_ids)) == 1
    assert accepted > 0  # the fuzzer reaches the happy path too
