"""Prometheus metrics, one set per app (so several apps in one process, as in tests, do not collide).

With `--workers N` every process writes its samples to `PROMETHEUS_MULTIPROC_DIR` (set by
`imgproxy serve`), and `/metrics` merges them, whichever process answers the scrape.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("imgproxy_http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.duration = Histogram(
            "imgproxy_http_request_duration_seconds", "Request duration", ["route"], buckets=_LATENCY, registry=r
        )
        self.stage = Histogram(
            "imgproxy_stage_duration_seconds",
            "Stages of a miss: queue, fetch, decode, transform, encode, describe",
            ["stage"],
            buckets=_LATENCY,
            registry=r,
        )
        self.cache = Counter(
            "imgproxy_cache_events", "Cache hit, miss, eviction, store, error by tier", ["tier", "event"], registry=r
        )
        self.cache_bytes = Gauge(
            "imgproxy_cache_bytes", "Bytes held by in-process caches", ["tier"], multiprocess_mode="livesum", registry=r
        )
        self.coalesced = Counter("imgproxy_coalesced_requests", "Requests that joined an identical render", registry=r)
        self.in_flight = Gauge(
            "imgproxy_renders_in_flight", "Renders running in the pool", multiprocess_mode="livesum", registry=r
        )
        self.queued = Gauge(
            "imgproxy_renders_queued", "Renders waiting for a pool thread", multiprocess_mode="livesum", registry=r
        )
        self.rejected = Counter("imgproxy_rejected_requests", "Requests answered 503", ["reason"], registry=r)
        self.fetch_errors = Counter("imgproxy_source_fetch_errors", "Failed source fetches", ["kind"], registry=r)

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)

    def observe_work(self, running: int, queued: int) -> None:
        self.in_flight.set(running)
        self.queued.set(queued)

    def observe_stages(self, timings: dict[str, float]) -> None:
        for stage, milliseconds in timings.items():
            self.stage.labels(stage).observe(milliseconds / 1000)
