"""The HTTP front door's settings: limits and defaults, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from specdec import InvalidArgumentError

__all__ = ["HttpSettings"]

_POSITIVE_INTS = (
    "max_open_streams",
    "max_prompt_tokens",
    "max_tokens_cap",
    "default_max_tokens",
    "max_body_bytes",
    "max_stop_strings",
    "max_stop_chars",
    "max_messages",
    "concurrency",
)


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """Knobs of the HTTP server; the defaults suit one machine.

    Limits (answered with a clear JSON error body):

    - ``max_open_streams``: generations queued or running at once; beyond it ``429``.
    - ``max_body_bytes``: request body size; beyond it ``413``.
    - ``max_prompt_tokens``: prompt length after tokenization (chat template included); beyond it ``413``.
    - ``max_tokens_cap``: the largest ``max_tokens`` a request may ask for; beyond it ``413``.

    ``default_max_tokens`` applies when a request names none. ``concurrency``:
    generations that run at once on the one generator (1 until the batched
    engine lands; more only for a generator that serves several rows).
    ``retention_s``: how long a finished stream stays readable at
    ``/v1/streams/{id}/events`` (resume, late joiners). ``model_name`` is what
    ``/v1/models`` lists and responses carry; a request's ``model`` may be that
    name or omitted.
    """

    model_name: str = "specdec"
    draft_name: str = "unknown"
    max_open_streams: int = 64
    max_prompt_tokens: int = 8192
    max_tokens_cap: int = 2048
    default_max_tokens: int = 256
    max_body_bytes: int = 1_000_000
    max_stop_strings: int = 4
    max_stop_chars: int = 256
    max_messages: int = 512
    concurrency: int = 1
    retention_s: float = 300.0

    def __post_init__(self) -> None:
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"HttpSettings.{name} must be an int >= 1, got {value!r}")
        if self.default_max_tokens > self.max_tokens_cap:
            raise InvalidArgumentError(
                f"HttpSettings.default_max_tokens ({self.default_max_tokens}) must not exceed "
                f"max_tokens_cap ({self.max_tokens_cap})"
            )
        if isinstance(self.retention_s, bool) or not isinstance(self.retention_s, (int, float)) or self.retention_s < 0:
            raise InvalidArgumentError(f"HttpSettings.retention_s must be a number >= 0, got {self.retention_s!r}")
        for name in ("model_name", "draft_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidArgumentError(f"HttpSettings.{name} must be a non-empty string, got {value!r}")
