"""Prometheus metrics of the HTTP front door (``prometheus_client``, one registry per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_RATIO_BUCKETS = tuple(i / 10 for i in range(11))


class Metrics:
    """The server's counters, gauges and histograms, kept in a registry of their own.

    A registry per app (not the process-global one) lets several servers live
    in one process (tests, the benchmark) without their series colliding.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "specdec_http_requests", "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"], registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter("specdec_prompt_tokens", "Prompt tokens of finished generations", registry=r)
        self.completion_tokens = Counter(
            "specdec_completion_tokens", "Completion tokens generated (before stop-string truncation)", registry=r
        )
        self.drafted = Counter("specdec_drafted_tokens", "Draft tokens proposed to the target", registry=r)
        self.accepted = Counter("specdec_accepted_tokens", "Draft tokens the target accepted", registry=r)
        self.finished = Counter(
            "specdec_generations_finished", "Generations finished, by finish reason", ["reason"], registry=r
        )
        self.acceptance = Histogram(
            "specdec_acceptance_ratio", "Per generation: accepted / drafted tokens (generations that drafted)",
            buckets=_RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "specdec_time_to_first_token_seconds", "From the request's arrival to its first committed text",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "specdec_inter_token_latency_seconds",
            "Between two consecutive commits of one stream (a commit holds one verified block: 1..k+1 tokens)",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("specdec_queue_depth", "Generations admitted and waiting for the engine", registry=r)
        self.running = Gauge("specdec_running_generations", "Generations running now", registry=r)
        self.open_streams = Gauge(
            "specdec_open_streams", "Generations admitted and not finished (the 429 limit counts these)", registry=r
        )
        self.rejected = Counter(
            "specdec_rejected_requests", "Requests refused by a limit, by reason", ["reason"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
