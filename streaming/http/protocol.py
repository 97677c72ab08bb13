"""OpenAI request bodies in, validated requests out; OpenAI-style errors for everything else.

Two endpoints share one request type, :class:`CompletionRequest`: ``/v1/completions``
(``prompt``) and ``/v1/chat/completions`` (``messages``, rendered with the
tokenizer's chat template). Every field is checked before any model work:
unknown fields and fields we do not implement are refused with a 400 naming
the parameter, never silently ignored. A field we do not implement is
accepted only at the value that changes nothing (``n: 1``,
``presence_penalty: 0``, ``logprobs: null`` ...), because common clients send
those defaults explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .settings import HttpSettings

__all__ = ["ApiError", "CompletionRequest", "parse_request"]


class ApiError(Exception):
    """An error answered as OpenAI does: ``{"error": {"message", "type", "param", "code"}}`` with a status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True, kw_only=True)
class CompletionRequest:
    """One validated request. Exactly one of ``prompt`` / ``prompt_ids`` / ``messages`` is set."""

    chat: bool
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    messages: list[dict[str, str]] | None = None
    stream: bool = False
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    include_usage: bool = False
    include_drafts: bool = False

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SpeculativeGenerator.generate`` (temperature 0: greedy)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_tokens, "seed": self.seed}
        if self.temperature == 0:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


# Fields each endpoint implements.
_COMMON = {
    "model", "stream", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n", "stream_options", "user",
}
_COMPLETION_FIELDS = _COMMON | {"prompt"}
_CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens"}

# Fields OpenAI defines that we do not implement, with the values that leave them off.
_NO_OP_VALUES: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "logprobs": (False, 0),
    "top_logprobs": (0,),
    "echo": (False,),
    "best_of": (1,),
    "suffix": ("",),
    "parallel_tool_calls": (True, False),
    "tools": ([],),
    "functions": ([],),
    "service_tier": ("auto", "default"),
    "store": (False,),
    "metadata": ({},),
}
_ROLES = ("system", "developer", "user", "assistant")


def _bad(message: str, param: str | None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _check_fields(body: dict[str, Any], allowed: set[str], endpoint: str) -> None:
    for name, value in body.items():
        if name in allowed:
            continue
        if name in _NO_OP_VALUES:
            if value is None or any(type(value) is type(v) and value == v for v in _NO_OP_VALUES[name]):
                continue
            raise _bad(
                f"'{name}' is not supported by this server (only its neutral value is accepted); remove it",
                name,
                "unsupported_parameter",
            )
        raise _bad(f"Unrecognized request argument supplied to {endpoint}: '{name}'", name, "unknown_parameter")


def _number(body: dict[str, Any], name: str, low: float, high: float, default: float | None) -> float | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"'{name}' must be a number, got {_kind(value)}", name, "invalid_type")
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low} and {high}, got {value}", name, "invalid_value")
    return float(value)


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"'{name}' must be an integer, got {_kind(value)}", name, "invalid_type")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(type(value), repr(value))


def _stop(body: dict[str, Any], settings: HttpSettings) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("'stop' must be a string or an array of strings", "stop", "invalid_type")
    if len(stops) > settings.max_stop_strings:
        raise _bad(f"'stop' holds {len(stops)} strings; at most {settings.max_stop_strings}", "stop", "invalid_value")
    if any(not s for s in stops):
        raise _bad("'stop' strings must not be empty", "stop", "invalid_value")
    if any(len(s) > settings.max_stop_chars for s in stops):
        raise _bad(f"'stop' strings must be at most {settings.max_stop_chars} characters", "stop", "invalid_value")
    return tuple(dict.fromkeys(stops))


def _stream_options(body: dict[str, Any], stream: bool) -> tuple[bool, bool]:
    options = body.get("stream_options")
    if options is None:
        return False, False
    if not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options", "invalid_type")
    if not stream:
        raise _bad("'stream_options' is only allowed when 'stream' is true", "stream_options", "invalid_value")
    for key, value in options.items():
        if key not in ("include_usage", "include_drafts"):
            raise _bad(
                f"Unrecognized stream option: 'stream_options.{key}'", f"stream_options.{key}", "unknown_parameter"
            )
        if not isinstance(value, bool):
            raise _bad(f"'stream_options.{key}' must be a boolean", f"stream_options.{key}", "invalid_type")
    return bool(options.get("include_usage", False)), bool(options.get("include_drafts", False))


def _prompt(value: Any) -> tuple[str | None, list[int] | None]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
        value = value[0]  # a batch of one
    if isinstance(value, str):
        if not value:
            raise _bad("'prompt' must not be empty", "prompt", "invalid_value")
        return value, None
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        if any(t < 0 for t in value):
            raise _bad("'prompt' token ids must be >= 0", "prompt", "invalid_value")
        return None, list(value)
    if isinstance(value, list) and len(value) > 1:
        raise _bad("only one prompt per request is supported (send several requests)", "prompt", "unsupported_value")
    raise _bad("'prompt' must be a string or an array of token ids", "prompt", "invalid_type")


def _messages(value: Any, settings: HttpSettings) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise _bad("'messages' must be a non-empty array", "messages", "invalid_type")
    if len(value) > settings.max_messages:
        raise _bad(f"'messages' holds {len(value)} messages; at most {settings.max_messages}", "messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"'{where}' must be an object", where, "invalid_type")
        extra = set(message) - {"role", "content", "name"}
        if extra:
            raise _bad(f"'{where}' has unsupported fields: {sorted(extra)}", where, "unsupported_parameter")
        role = message.get("role")
        if role not in _ROLES:
            raise _bad(f"'{where}.role' must be one of {list(_ROLES)}, got {role!r}", f"{where}.role", "invalid_value")
        content = message.get("content")
        if isinstance(content, list):  # content parts: text only
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _bad(
                        f"'{where}.content' parts must be {{'type': 'text', 'text': str}}; only text is supported",
                        f"{where}.content",
                        "unsupported_value",
                    )
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise _bad(f"'{where}.content' must be a string or text parts", f"{where}.content", "invalid_type")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def parse_request(body: Any, *, chat: bool, settings: HttpSettings) -> CompletionRequest:
    """Validate an OpenAI completions (``chat=False``) or chat completions body; raise :class:`ApiError`."""
    endpoint = "/v1/chat/completions" if chat else "/v1/completions"
    if not isinstance(body, dict):
        raise _bad(f"the request body must be a JSON object, got {_kind(body)}", None, "invalid_type")
    _check_fields(body, _CHAT_FIELDS if chat else _COMPLETION_FIELDS, endpoint)
    model = body.get("model")
    if model is not None and model != settings.model_name:
        raise ApiError(
            404, f"The model '{model}' does not exist; this server serves '{settings.model_name}'",
            param="model", code="model_not_found",
        )  # fmt: skip
    if body.get("user") is not None and not isinstance(body.get("user"), str):
        raise _bad("'user' must be a string", "user", "invalid_type")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be a boolean, got {_kind(stream)}", "stream", "invalid_type")
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise _bad("only 'n': 1 is supported", "n", "unsupported_value")
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    max_tokens = None
    for name in names:
        value = _integer(body, name)
        if value is not None:
            if value < 1:
                raise _bad(f"'{name}' must be >= 1, got {value}", name, "invalid_value")
            if value > settings.max_tokens_cap:
                raise ApiError(
                    413, f"'{name}' is {value}; this server allows at most {settings.max_tokens_cap}",
                    param=name, code="max_tokens_too_large",
                )  # fmt: skip
            max_tokens = value if max_tokens is None else max_tokens
    temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
    top_p = _number(body, "top_p", 0.0, 1.0, None)
    if top_p is not None and top_p == 0:
        raise _bad("'top_p' must be > 0", "top_p", "invalid_value")
    top_k = _integer(body, "top_k")
    if top_k is not None and top_k in (0, -1):
        top_k = None  # vLLM's spelling of "no top-k"
    elif top_k is not None and top_k < 1:
        raise _bad(f"'top_k' must be >= 1 (or -1 for none), got {top_k}", "top_k", "invalid_value")
    seed = _integer(body, "seed")
    include_usage, include_drafts = _stream_options(body, stream)
    prompt = prompt_ids = messages = None
    if chat:
        if "messages" not in body:
            raise _bad("'messages' is required", "messages", "missing_required_parameter")
        messages = _messages(body["messages"], settings)
    else:
        if "prompt" not in body:
            raise _bad("'prompt' is required", "prompt", "missing_required_parameter")
        prompt, prompt_ids = _prompt(body["prompt"])
    return CompletionRequest(
        chat=chat,
        prompt=prompt,
        prompt_ids=prompt_ids,
        messages=messages,
        stream=stream,
        max_tokens=settings.default_max_tokens if max_tokens is None else max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=_stop(body, settings),
        include_usage=include_usage,
        include_drafts=include_drafts,
    )
