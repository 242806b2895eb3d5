"""Prometheus metrics of one app (its own registry, so several apps in one process do not collide):
requests by route template and status, request latency, micro-batch sizes and times, queue depth.

Try it:  curl -s localhost:8000/metrics | grep vitkit_
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vitkit.service.engine import Engine

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Engine):
        self.registry = CollectorRegistry()
        self.requests = Counter("vitkit_requests", "HTTP requests by route template and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("vitkit_request_seconds", "HTTP request latency by route template", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("vitkit_batch_size", "images per model batch", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.batch_seconds = Histogram("vitkit_batch_seconds", "model time per batch", buckets=LATENCY_BUCKETS,
                                       registry=self.registry)
        queue_depth = Gauge("vitkit_queue_depth", "requests waiting for the model", registry=self.registry)
        queue_depth.set_function(lambda: engine.queue_depth)
        engine.observers.append(self.observe_batch)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware: every HTTP request counted under its route template (e.g. /v1/thumbnail/{hit_id},
    so ids make no new series; unmatched paths count as "unmatched"), with its status and latency."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # stays 500 only if no response was started

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
