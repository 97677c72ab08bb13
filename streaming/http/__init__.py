"""specdec.streaming.http: an OpenAI-compatible HTTP front door with server-sent events.

``specdec serve --http HOST:PORT`` runs it (see ``docs/http.md``). In code::

    from specdec.streaming.http import HttpSettings, run_server
    run_server("127.0.0.1:8000", generator, tokenizer, model_name="smollm2")

or build the ASGI app for your own server: ``create_app(Frontend(generator, tokenizer, HttpSettings()))``.
Needs the ``http`` extra (starlette, uvicorn, sse-starlette, prometheus-client).
"""

from .app import create_app
from .protocol import ApiError, CompletionRequest, parse_request
from .server import parse_address, run_server, serve_http
from .service import Frontend
from .settings import HttpSettings
from .stops import StopStringCriteria, StopTextFilter

__all__ = [
    "ApiError",
    "CompletionRequest",
    "Frontend",
    "HttpSettings",
    "StopStringCriteria",
    "StopTextFilter",
    "create_app",
    "parse_address",
    "parse_request",
    "run_server",
    "serve_http",
]
