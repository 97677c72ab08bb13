"""The worker's settings: one keyword-only dataclass, validated when made."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from specdec import InvalidArgumentError

from .protocol import RequestLimits

__all__ = ["WorkerSettings"]


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Knobs of a worker; the defaults suit one machine."""

    model_name: str = "unknown"  # "unknown": the hub's guess from the generator
    draft_name: str = "unknown"
    limits: RequestLimits = field(default_factory=RequestLimits)
    worker_id: str | None = None  # default: a random id
    event_expiry_s: int = 600  # MQTT 5 message expiry on every event
    linger_s: float = 120.0  # how long a finished stream's log stays available for resume
    # Generating at once: None = the engine's capacity (the generator's max_batch_rows when it has
    # concurrent_generate, else 1). Beyond it a stream waits in the worker's queue with `queued` notices.
    max_running_streams: int | None = None
    max_queued_streams: int = 32  # waiting for a slot; beyond running + queued: error(code="busy")
    max_open_streams: int | None = None  # an explicit cap on running + queued (None: the two above added)
    replay_window_s: float = 1.0  # a resume republishes an event at most once per window (per stream)
    max_tracked_streams: int = 10_000  # finished streams kept for linger; oldest dropped first
    will_delay_s: int = 0  # MQTT 5 Will Delay Interval for the guard and status Wills
    guards: bool = True  # per-stream Will connections (see specdec.streaming.mqtt.guards)
    shutdown_timeout_s: float = 10.0  # a graceful stop waits this long for open streams' last events

    def __post_init__(self) -> None:
        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        checks = {
            "event_expiry_s": (self.event_expiry_s, 1),
            "linger_s": (self.linger_s, 0),
            "max_queued_streams": (self.max_queued_streams, 0),
            "replay_window_s": (self.replay_window_s, 0),
            "max_tracked_streams": (self.max_tracked_streams, 1),
            "will_delay_s": (self.will_delay_s, 0),
            "shutdown_timeout_s": (self.shutdown_timeout_s, 0.001),
        }
        for name in ("max_open_streams", "max_running_streams"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgumentError(f"WorkerSettings.{name} must be an integer >= 1 or None, got {value!r}")
        for name, (value, low) in checks.items():
            if not number(value) or value < low:
                raise InvalidArgumentError(f"WorkerSettings.{name} must be a number >= {low}, got {value!r}")
