"""The Starlette app: OpenAI-compatible routes, the hub's event stream, metrics, health and the live page.

Routes::

    POST /v1/completions               OpenAI completions (stream true/false)
    POST /v1/chat/completions          OpenAI chat completions (the tokenizer's chat template)
    GET  /v1/models                    the one model served
    GET  /v1/streams/{id}/events       the hub's events (schema v1) as SSE; Last-Event-ID resumes
    GET  /health                       {"status": "ok", ...}
    GET  /metrics                      Prometheus text format
    GET  /                             the live page

Server-sent events are framed by ``sse-starlette``; HTTP by uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .. import StreamExpiredError, UnknownStreamError
from ..events import event_to_dict
from .metrics import CONTENT_TYPE_LATEST
from .protocol import ApiError, parse_request
from .responses import ChunkMaker
from .service import Admission, Frontend

__all__ = ["create_app"]

_ROUTE_LABELS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _read_json(request: Request, limit: int) -> Any:
    """The body as JSON; 413 past ``limit`` bytes (checked as it arrives), 400 when it is not JSON."""
    too_large = ApiError(413, f"The request body exceeds {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}", code="invalid_json") from None


async def _wait_disconnect(request: Request) -> None:
    """Returns once the client has gone (call after the body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(frontend: Frontend) -> Starlette:
    """The ASGI app serving ``frontend`` (see the module docstring for the routes)."""
    settings = frontend.settings

    async def completions(request: Request, *, chat: bool) -> Response:
        body = await _read_json(request, settings.max_body_bytes)
        parsed = parse_request(body, chat=chat, settings=settings)
        admission = frontend.admit()
        try:
            prompt_ids = await frontend.encode(parsed)
        except BaseException:
            frontend.release(admission)
            raise
        maker = ChunkMaker(parsed, admission.stream_id, settings.model_name)
        headers = {"X-Specdec-Stream-Id": admission.stream_id}
        if parsed.stream:
            return EventSourceResponse(
                _sse(frontend, parsed, prompt_ids, admission, maker), sep="\n", headers=headers, ping=15
            )
        return await _complete(request, frontend, parsed, prompt_ids, admission, maker, headers)

    async def post_completions(request: Request) -> Response:
        return await completions(request, chat=False)

    async def post_chat(request: Request) -> Response:
        return await completions(request, chat=True)

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": settings.model_name, "object": "model", "created": started, "owned_by": "specdec",
             "specdec": {"draft": settings.draft_name}},
        ]})  # fmt: skip

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": settings.model_name, "open_streams": frontend.open_streams,
                             "chat_template": chat_template})  # fmt: skip

    async def metrics(request: Request) -> Response:
        return Response(frontend.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request) -> Response:
        return HTMLResponse(page_html)

    async def stream_events(request: Request) -> Response:
        stream_id = request.path_params["stream_id"]
        last = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        after_seq = None
        if last not in (None, ""):
            if not last.isdigit():
                raise ApiError(400, f"Last-Event-ID must be an event seq (an integer >= 0), got {last!r}",
                               param="Last-Event-ID", code="invalid_value")  # fmt: skip
            after_seq = int(last)
        try:
            stream = frontend.hub.get(stream_id)
        except StreamExpiredError as exc:
            raise ApiError(410, str(exc), code="stream_expired", type="not_found_error") from None
        except UnknownStreamError as exc:
            raise ApiError(404, f"{exc} (streams appear here once their generation starts)",
                           code="stream_not_found", type="not_found_error") from None  # fmt: skip
        try:
            subscription = stream.subscribe(after_seq=after_seq)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="Last-Event-ID", code="invalid_value") from None

        async def events() -> AsyncIterator[ServerSentEvent]:
            async for event in subscription:
                seq = event.seq
                yield ServerSentEvent(data=_dumps(event_to_dict(event)), id=str(seq) if seq >= 0 else None)

        return EventSourceResponse(events(), sep="\n", ping=15)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}",
                                        type=kind, headers=dict(exc.headers or {})))  # fmt: skip

    async def on_internal_error(request: Request, exc: Exception) -> Response:
        return _error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await frontend.close()

    started = int(time.time())
    chat_template = bool(getattr(frontend.tokenizer, "chat_template", None))
    page_html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
    app = Starlette(
        routes=[
            Route("/v1/completions", post_completions, methods=["POST"]),
            Route("/v1/chat/completions", post_chat, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/streams/{stream_id}/events", stream_events, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/", page, methods=["GET"]),
        ],
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error, Exception: on_internal_error},
        lifespan=lifespan,
    )
    app.add_middleware(_CountRequests, frontend=frontend)
    return app


async def _sse(
    frontend: Frontend, request: Any, prompt_ids: list[int], admission: Admission, maker: ChunkMaker
) -> AsyncIterator[dict[str, str]]:
    """The streamed OpenAI chunks; ``data: [DONE]`` last. Leaving early cancels the generation."""
    failed = False
    try:
        async for piece in frontend.run(request, prompt_ids, admission):
            if piece.kind == "error":
                failed = True
                kind = "invalid_request_error" if piece.code == "bad_request" else "server_error"
                yield {"data": _dumps(ApiError(500, piece.text, code=piece.code, type=kind).body())}
            elif piece.kind == "end":
                if not failed:
                    yield {"data": _dumps(maker.final_chunk(piece.finish_reason or "stop"))}
                    if request.include_usage and piece.usage is not None:
                        yield {"data": _dumps(maker.usage_chunk(piece.usage))}
            else:
                chunk = maker.chunk(piece)
                if chunk is not None:
                    yield {"data": _dumps(chunk)}
        yield {"data": "[DONE]"}
    finally:
        frontend.abort(admission)  # synchronous: safe inside a cancelled scope


async def _complete(
    http: Request, frontend: Frontend, request: Any, prompt_ids: list[int], admission: Admission,
    maker: ChunkMaker, headers: dict[str, str],
) -> Response:  # fmt: skip
    """A non-streamed response; the generation is cancelled if the client leaves first."""

    async def collect() -> Response:
        texts: list[str] = []
        error = ApiError(500, "generation failed", type="server_error", headers=headers)
        async for piece in frontend.run(request, prompt_ids, admission):
            if piece.kind == "content":
                texts.append(piece.text)
            elif piece.kind == "error":
                status = 400 if piece.code == "bad_request" else 500
                kind = "invalid_request_error" if status == 400 else "server_error"
                error = ApiError(status, piece.text, code=piece.code, type=kind, headers=headers)
            elif piece.kind == "end":
                if piece.finish_reason == "error":
                    return _error_response(error)
                body = maker.response("".join(texts), piece.finish_reason or "stop", piece.usage or {})
                return JSONResponse(body, headers=headers)
        raise RuntimeError("the stream ended without an end event")

    work = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(_wait_disconnect(http))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
        frontend.abort(admission)
    if work.cancelled() or not work.done():
        return Response(status_code=499)  # nobody is listening
    return work.result()


class _CountRequests:
    """Pure ASGI middleware: counts answered requests by route and status (streams counted at their start)."""

    def __init__(self, app: Any, frontend: Frontend) -> None:
        self.app = app
        self.counter = frontend.metrics.requests

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        label = (
            path if path in _ROUTE_LABELS else "/v1/streams/{id}/events" if path.startswith("/v1/streams/") else "other"
        )

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.counter.labels(label, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
