"""The HTTP front door end to end: a real server process, the official openai client and httpx.

The server is ``specdec serve --http`` on a tiny random Llama saved to a temp
folder (float32, n-gram drafter). Oracles: the target's own greedy
``generate`` for every text; the hub's ``end`` event for cancellations.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="the HTTP tests need the http extra: pip install -e '.[dev]'")
openai = pytest.importorskip("openai", reason="the HTTP tests drive the server with the openai client")
import httpx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_fixtures import (  # noqa: E402
    chat_ids,
    prompt_ids,
    reference_text,
    save_model,
    start_cli_server,
    start_custom_server,
)

MODEL_DIR_NAME = "tiny-http-model"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("http") / MODEL_DIR_NAME)


_SERVER_FAILED: list[str] = []


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    if _SERVER_FAILED:  # pytest retries a failed module fixture for every test: fail fast instead
        pytest.fail(f"the server did not start earlier in this module: {_SERVER_FAILED[0]}")
    try:
        srv = start_cli_server(model_dir, tmp_path_factory.mktemp("logs") / "server.log")
    except RuntimeError as exc:
        _SERVER_FAILED.append(str(exc)[:500])
        raise
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server, model_dir):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _model(model_dir) -> str:
    return str(model_dir)


def _sse_data(lines) -> list:
    """The JSON payloads of ``data:`` lines (``[DONE]`` kept as a string)."""
    out = []
    for line in lines:
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _events(server, stream_id: str, last_event_id: int | None = None, limit: int | None = None) -> list[dict]:
    """Events of the hub's stream over SSE (all of them, or the first ``limit``, then hang up)."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    events: list[dict] = []
    with httpx.stream("GET", f"{server.url}/v1/streams/{stream_id}/events", headers=headers, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1]["type"] == "end" or (limit is not None and len(events) >= limit):
                    break
    return events


# --------------------------------------------------------------------------- exactness


def test_models_and_health(server, model_dir):
    models = httpx.get(server.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == [_model(model_dir)]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["chat_template"] is True


@pytest.mark.parametrize("prompt", ["the quick brown fox", "héllo wörld 🙂", "speculative decoding"])
def test_completion_greedy_equals_generate(client, model_dir, prompt):
    out = client.completions.create(model=_model(model_dir), prompt=prompt, max_tokens=40, temperature=0)
    assert out.choices[0].text == reference_text(prompt_ids(prompt), 40)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 40 and out.usage.prompt_tokens == len(prompt_ids(prompt))
    ours = out.usage.model_extra["specdec"]
    assert ours["steps"] >= 1 and 0 <= ours["accepted"] <= ours["drafted"]
    assert ours["tokens_per_step"] == pytest.approx(40 / ours["steps"])


def test_completion_stream_chunks_join_to_generate(client, model_dir):
    prompt = "the lazy dog sleeps"
    chunks = list(
        client.completions.create(
            model=_model(model_dir), prompt=prompt, max_tokens=60, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == reference_text(prompt_ids(prompt), 60)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 60
    assert set(usage.model_extra["specdec"]) >= {"drafted", "accepted", "acceptance_rate", "steps", "tokens_per_step"}
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_and_not(client, model_dir):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    expected = reference_text(chat_ids(messages), 30)
    full = client.chat.completions.create(model=_model(model_dir), messages=messages, max_tokens=30, temperature=0)
    assert full.choices[0].message.content == expected and full.choices[0].message.role == "assistant"
    chunks = list(
        client.chat.completions.create(
            model=_model(model_dir), messages=messages, max_tokens=30, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_cuts_text_and_stops_generation(client, model_dir, stream):
    prompt, budget = "a stream of tokens", 80
    full = reference_text(prompt_ids(prompt), budget)
    stop = full[25:28]  # a stop string from the middle of the text (may also occur earlier)
    assert stop and full.find(stop) >= 0
    kwargs = dict(model=_model(model_dir), prompt=prompt, max_tokens=budget, temperature=0, stop=[stop, "\x00never"])
    if stream:
        chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        usage = chunks[-1].usage
    else:
        out = client.completions.create(**kwargs)
        text, finish, usage = out.choices[0].text, out.choices[0].finish_reason, out.usage
    assert text == full[: full.find(stop)]
    assert finish == "stop"
    # Generation stopped at the token that completed the stop string, far short of the budget.
    assert usage.completion_tokens < budget
    tokens_with_stop = reference_text(prompt_ids(prompt), usage.completion_tokens)
    assert stop in tokens_with_stop and stop not in reference_text(prompt_ids(prompt), usage.completion_tokens - 1)


def test_sampling_with_seed_is_reproducible(client, model_dir):
    kwargs = dict(model=_model(model_dir), prompt="the fox", max_tokens=20, temperature=0.9, top_p=0.95, seed=7)
    first = client.completions.create(**kwargs).choices[0].text
    again = client.completions.create(**kwargs).choices[0].text
    other = client.completions.create(**{**kwargs, "seed": 8}).choices[0].text
    assert first == again
    assert other != first  # different seeds diverge (near-uniform random model, 20 tokens)
    topk = client.completions.create(**kwargs, extra_body={"top_k": 5}).choices[0].text
    assert isinstance(topk, str) and topk


# --------------------------------------------------------------------------- the hub's events over SSE


def test_events_resume_with_last_event_id(server, model_dir):
    prompt, budget = "speculative decoding drafts", 200
    body = {"model": _model(model_dir), "prompt": prompt, "max_tokens": budget, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as resp:
        stream_id = resp.headers["x-specdec-stream-id"]
        lines = resp.iter_lines()
        first = next(lines)  # generation has started: the stream is in the hub
        assert first.startswith("data:")
        part1 = _events(server, stream_id, limit=6)
        part2 = _events(server, stream_id, last_event_id=part1[-1]["seq"])
        openai_text = "".join(
            d["choices"][0]["text"] for d in _sse_data([first, *lines]) if d != "[DONE]" and d["choices"]
        )
    events = part1 + part2
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(len(events))), "events lost or repeated across the resume"
    assert events[0]["type"] == "start" and events[-1]["type"] == "end"
    commits = [e for e in events if e["type"] == "commit"]
    expected = reference_text(prompt_ids(prompt), budget)
    assert "".join(c["text"] for c in commits) == expected == events[-1]["text"] == openai_text
    assert sum(len(c["token_ids"]) for c in commits) == budget
    # A late joiner replays everything; a resume from the end gets nothing more.
    assert [e["seq"] for e in _events(server, stream_id)] == seqs
    bad = httpx.get(f"{server.url}/v1/streams/{stream_id}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"
    missing = httpx.get(f"{server.url}/v1/streams/nosuchstream/events")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "stream_not_found"


def test_include_drafts_adds_draft_chunks(server, model_dir):
    body = {"model": _model(model_dir), "prompt": "the quick brown fox the quick brown fox the quick", "max_tokens": 40,
            "temperature": 0, "stream": True, "stream_options": {"include_drafts": True}}  # fmt: skip
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as resp:
        data = _sse_data(resp.iter_lines())
    chunks = [d for d in data if d != "[DONE]"]
    drafts = [c for c in chunks if c.get("specdec", {}).get("type") == "draft"]
    commits = [c for c in chunks if c.get("specdec", {}).get("type") == "commit"]
    assert drafts, "the n-gram drafter proposed nothing on a repetitive prompt"
    assert all(d["choices"][0]["text"] == "" and d["specdec"]["token_ids"] for d in drafts)
    assert commits[-1]["specdec"]["n_committed"] == 40
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == reference_text(prompt_ids(body["prompt"]), 40)


# --------------------------------------------------------------------------- bad input and disconnects


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    error = resp.json()["error"]
    assert error["message"] and error["type"]
    return error


def test_bad_requests_get_clear_errors_and_server_keeps_serving(server, model_dir):
    url = server.url + "/v1/completions"
    chat_url = server.url + "/v1/chat/completions"
    raw = {"headers": {"Content-Type": "application/json"}}
    assert _error(httpx.post(url, content=b"{not json", **raw), 400)["code"] == "invalid_json"
    assert _error(httpx.post(url, content=b"[1, 2]", **raw), 400)["code"] == "invalid_type"
    assert _error(httpx.post(url, json={"prompt": "x", "max_tokens": "ten"}), 400)["param"] == "max_tokens"
    assert _error(httpx.post(url, json={"prompt": "x", "temperature": "hot"}), 400)["param"] == "temperature"
    assert _error(httpx.post(url, json={"prompt": "x", "temperature": 3}), 400)["param"] == "temperature"
    assert _error(httpx.post(url, json={"prompt": 5}), 400)["param"] == "prompt"
    assert _error(httpx.post(url, json={"prompt": "x", "stream": "yes"}), 400)["param"] == "stream"
    assert _error(httpx.post(url, json={"prompt": "x", "stop": [1]}), 400)["param"] == "stop"
    assert _error(httpx.post(chat_url, json={"messages": "hi"}), 400)["param"] == "messages"
    assert _error(httpx.post(chat_url, json={"messages": [{"role": "robot", "content": "x"}]}), 400)["param"] == (
        "messages[0].role"
    )
    unknown = _error(httpx.post(url, json={"prompt": "x", "frobnicate": 1}), 400)
    assert unknown["param"] == "frobnicate" and unknown["code"] == "unknown_parameter"
    for name, value in [("n", 2), ("logprobs", 3), ("presence_penalty", 0.5), ("echo", True)]:
        assert _error(httpx.post(url, json={"prompt": "x", name: value}), 400)["param"] == name
    assert httpx.post(url, json={"prompt": "x", "max_tokens": 2, "n": 1, "presence_penalty": 0}).status_code == 200
    assert _error(httpx.post(url, json={"prompt": "x", "stream_options": {"include_usage": True}}), 400)
    assert _error(httpx.post(url, json={"prompt": "x", "model": "gpt-4"}), 404)["code"] == "model_not_found"
    # Limits: body size, max_tokens, prompt tokens (413).
    huge = b'{"prompt": "' + b"a" * 2_000_000 + b'"}'
    assert _error(httpx.post(url, content=huge, **raw), 413)["code"] == "request_too_large"
    assert _error(httpx.post(url, json={"prompt": "x", "max_tokens": 10**6}), 413)["code"] == "max_tokens_too_large"
    long_prompt = "the quick brown fox jumps over the lazy dog " * 1500  # > 8192 tokens, < 1 MB
    assert _error(httpx.post(url, json={"prompt": long_prompt, "max_tokens": 1}), 413)["code"] == "prompt_too_long"
    sentence = "the quick brown fox jumps over the lazy dog "
    reps = 100
    while len(prompt_ids(sentence * reps)) < 4200:  # past the model's 4096 positions, under the 8192-token limit
        reps += 20
    assert 4096 <= len(prompt_ids(sentence * reps)) < 8192
    error = _error(httpx.post(url, json={"prompt": sentence * reps, "max_tokens": 1}), 400)
    assert error["code"] == "context_length_exceeded"
    assert _error(httpx.get(server.url + "/v1/nothing"), 404)
    assert _error(httpx.get(url), 405)
    # Still serving, correctly.
    ok = httpx.post(url, json={"prompt": "the fox", "max_tokens": 10, "temperature": 0}, timeout=60).json()
    assert ok["choices"][0]["text"] == reference_text(prompt_ids("the fox"), 10)
    assert server.alive()


def _metric(server, name: str, labels: str = "") -> float:
    text = httpx.get(server.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_disconnect_mid_stream_cancels_generation(server, model_dir):
    budget = 1000
    body = {"model": _model(model_dir), "prompt": "the quick", "max_tokens": budget, "temperature": 0, "stream": True}
    cancelled_before = _metric(server, "specdec_generations_finished_total", '{reason="cancelled"}')
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as resp:
        stream_id = resp.headers["x-specdec-stream-id"]
        lines = resp.iter_lines()
        next(lines), next(lines)
    # The client hung up after the first chunk: the hub's own record says the generation was cancelled early.
    end = _events(server, stream_id)[-1]
    assert end["type"] == "end" and end["finish_reason"] == "cancelled"
    assert end["usage"]["completion_tokens"] < budget
    assert _metric(server, "specdec_generations_finished_total", '{reason="cancelled"}') == cancelled_before + 1
    # A non-streamed request whose client gives up is cancelled too. (Sampled at temperature 1: the random
    # model's greedy text loops and the drafter copies it, so 1000 greedy tokens took under a second on a
    # fast machine and could end on their own right after the client hung up; sampled, about one token
    # per step.)
    long = {**body, "stream": False, "temperature": 1.0, "seed": 3}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=long, timeout=httpx.Timeout(60, read=0.5))
    deadline = time.monotonic() + 30
    while _metric(server, "specdec_generations_finished_total", '{reason="cancelled"}') < cancelled_before + 2:
        assert time.monotonic() < deadline, "the abandoned non-streamed generation was not cancelled"
        time.sleep(0.1)
    assert _metric(server, "specdec_open_streams") == 0
    assert httpx.get(server.url + "/health").json()["open_streams"] == 0


def test_fifty_concurrent_streaming_clients(server, model_dir):
    prompts = [f"the quick brown fox {i} jumps" for i in range(50)]
    budget = 12

    async def one(http: httpx.AsyncClient, prompt: str) -> str:
        body = {"model": _model(model_dir), "prompt": prompt, "max_tokens": budget, "temperature": 0, "stream": True}
        async with http.stream("POST", server.url + "/v1/completions", json=body) as resp:
            assert resp.status_code == 200, await resp.aread()
            data = _sse_data([line async for line in resp.aiter_lines()])
        assert data[-1] == "[DONE]"
        return "".join(d["choices"][0]["text"] for d in data[:-1] if d["choices"])

    async def main() -> list[str]:
        limits = httpx.Limits(max_connections=60)
        async with httpx.AsyncClient(timeout=180, limits=limits) as http:
            return await asyncio.gather(*(one(http, p) for p in prompts))

    texts = asyncio.run(main())
    for prompt, text in zip(prompts, texts, strict=False):
        assert text == reference_text(prompt_ids(prompt), budget), prompt
    assert server.alive() and httpx.get(server.url + "/health").json()["open_streams"] == 0
    metrics = httpx.get(server.url + "/metrics").text
    for name in ("specdec_time_to_first_token_seconds_bucket", "specdec_inter_token_latency_seconds_bucket",
                 "specdec_acceptance_ratio_bucket", "specdec_queue_depth", "specdec_drafted_tokens_total",
                 "specdec_accepted_tokens_total",
                 'specdec_http_requests_total{endpoint="/v1/completions",status="200"}'):  # fmt: skip
        assert name in metrics, name


def test_open_stream_limit_answers_429(model_dir, tmp_path):
    srv = start_custom_server(model_dir, tmp_path / "limits.log", max_open_streams=2)
    try:
        url = srv.url + "/v1/completions"
        body = {"model": "tiny", "prompt": "the quick", "max_tokens": 2000, "temperature": 0, "stream": True}
        with httpx.stream("POST", url, json=body, timeout=60) as first, httpx.stream(
            "POST", url, json=body, timeout=60
        ) as second:
            assert first.status_code == second.status_code == 200
            refused = httpx.post(url, json={**body, "max_tokens": 5})
            error = _error(refused, 429)
            assert error["code"] == "too_many_open_streams" and refused.headers["retry-after"]
        # Both hung up: their places come back once their generations are cancelled.
        deadline = time.monotonic() + 30
        while httpx.get(srv.url + "/health").json()["open_streams"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ok = httpx.post(url, json={"model": "tiny", "prompt": "the fox", "max_tokens": 8, "temperature": 0}, timeout=60)
        assert ok.json()["choices"][0]["text"] == reference_text(prompt_ids("the fox"), 8)
    finally:
        srv.stop()


# --------------------------------------------------------------------------- the live page in headless Chromium


def _chromium():
    import shutil

    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "headless Chromium is not installed (Debian: apt-get install -y chromium chromium-driver; "
            "scripts/setup.sh does it); the live page test needs it"
        )
    pytest.importorskip("selenium", reason="the page test drives Chromium with selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


_WATCH_DRAFTS = """
window.__drafts = [];
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes)
    if (n.nodeType === 1 && n.classList.contains("draft") && n.textContent) window.__drafts.push(n.textContent);
}).observe(document.getElementById("output"), {childList: true, subtree: true});
"""


def test_live_page_shows_committed_text_and_drafts(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    prompt, budget = "the quick brown fox the quick brown fox the quick", 60
    browser = _chromium()
    try:
        browser.get(server.url + "/")
        WebDriverWait(browser, 30).until(lambda b: b.find_element(By.ID, "model").text != "live")
        browser.execute_script(_WATCH_DRAFTS)
        box = browser.find_element(By.ID, "prompt")
        box.clear()
        box.send_keys(prompt)
        tokens = browser.find_element(By.ID, "max_tokens")
        tokens.clear()
        tokens.send_keys(str(budget))
        assert browser.find_element(By.ID, "chat").is_selected()
        assert browser.find_element(By.ID, "temperature").get_attribute("value") == "0"
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 120).until(
            lambda b: b.find_element(By.ID, "status").get_attribute("data-state") in ("done", "error")
        )
        status = browser.find_element(By.ID, "status")
        assert status.get_attribute("data-state") == "done", status.text
        committed = browser.execute_script("return document.getElementById('committed').textContent")
        assert committed == reference_text(chat_ids([{"role": "user", "content": prompt}]), budget)
        assert browser.execute_script("return window.__drafts.length") > 0, "no draft element appeared"
        assert not browser.find_elements(By.CSS_SELECTOR, "#output .draft"), "a draft outlived the generation"
        assert browser.find_element(By.ID, "ntok").text == str(budget)
        browser.save_screenshot(str(tmp_path / "page.png"))
    finally:
        browser.quit()


# --------------------------------------------------------------------------- MQTT alongside, one hub


def test_http_and_mqtt_alongside_share_one_generator(model_dir, tmp_path):
    """``serve --http … --start-broker``: both doors at once on one generator, each answer exact."""
    import shutil

    from http_fixtures import Server, free_port

    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (Debian: apt-get install mosquitto); needed for MQTT alongside HTTP")
    from specdec.streaming import CommitEvent
    from specdec.streaming.mqtt import StreamClient

    http_port, mqtt_port = free_port(), free_port()
    args = [sys.executable, "-m", "specdec.cli", "serve", "--target", str(model_dir), "--dtype", "float32",
            "--device", "cpu", "--http", f"127.0.0.1:{http_port}", "--start-broker",
            "--broker", f"mqtt://127.0.0.1:{mqtt_port}"]  # fmt: skip
    srv = Server(args, http_port, tmp_path / "alongside.log")
    budget = 80

    async def over_mqtt(prompt: str) -> str:
        async with StreamClient(f"mqtt://127.0.0.1:{mqtt_port}") as client:
            texts = []
            async for event in client.generate(prompt, max_new_tokens=budget):
                if isinstance(event, CommitEvent):
                    texts.append(event.text)
            return "".join(texts)

    async def over_http(http: httpx.AsyncClient, prompt: str) -> str:
        body = {"model": str(model_dir), "prompt": prompt, "max_tokens": budget, "temperature": 0}
        return (await http.post(srv.url + "/v1/completions", json=body)).json()["choices"][0]["text"]

    async def main() -> list[str]:
        async with httpx.AsyncClient(timeout=120) as http:
            return await asyncio.wait_for(
                asyncio.gather(over_mqtt("the quick brown"), over_http(http, "the lazy dog"),
                               over_mqtt("héllo wörld"), over_http(http, "a stream of")), 120)  # fmt: skip

    try:
        texts = asyncio.run(main())
        prompts = ["the quick brown", "the lazy dog", "héllo wörld", "a stream of"]
        for prompt, text in zip(prompts, texts, strict=False):
            assert text == reference_text(prompt_ids(prompt), budget), prompt
    finally:
        srv.stop()
