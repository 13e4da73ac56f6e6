"""`/metrics`: the server's counters in Prometheus' text format (prometheus-client, one registry per app).

| metric | type | what |
|---|---|---|
| `dln_requests_total{route, status}` | counter | HTTP requests answered, by route template and status |
| `dln_request_duration_seconds{route}` | histogram | arrival to the response's last byte (a stream's end) |
| `dln_prompt_tokens_total`, `dln_generation_tokens_total` | counter | tokens in `usage` of the responses |
| `dln_queue_depth` | gauge | requests waiting for the model (not started yet) |
| `dln_batch_size` | histogram | requests per model call that starts requests (e.g. a prefill of joiners) |

Routes are labelled by their template (`/v1/models/{model_id}`); any other path is `other`, so a scanner
cannot grow the label set.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """The app's metrics; `backend` gives the queue depth (`stats()["waiting"]`) and batch sizes."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, backend) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dln_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency = Histogram(
            "dln_request_duration_seconds", "request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("dln_prompt_tokens", "prompt tokens of the responses", registry=r)
        self.generation_tokens = Counter(
            "dln_generation_tokens", "generated tokens of the responses", registry=r
        )
        queue = Gauge("dln_queue_depth", "requests waiting for the model", registry=r)
        queue.set_function(lambda: float(backend.stats().get("waiting", 0)))
        self.batch_size = Histogram(
            "dln_batch_size", "requests per model call", buckets=BATCH_BUCKETS, registry=r
        )
        batcher = getattr(backend, "batcher", None)
        if batcher is not None:
            batcher.on_batch = self.batch_size.observe

    def count_usage(self, usage) -> None:
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.generation_tokens.inc(usage.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every response and times it to its last body message."""

    def __init__(self, app, metrics: ServerMetrics, routes: list[str]) -> None:
        self.app, self.metrics = app, metrics
        # "/v1/models/{model_id:path}" -> prefix "/v1/models/" labelled "/v1/models/{model_id}"
        self.exact = {r for r in routes if "{" not in r}
        self.prefixes = {r.split("{")[0]: r.split(":")[0].rstrip("}") + "}" for r in routes if "{" in r}

    def route(self, path: str) -> str:
        if path in self.exact:
            return path
        return next((label for prefix, label in self.prefixes.items() if path.startswith(prefix)), "other")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, route, status = time.perf_counter(), self.route(scope["path"]), 500

        async def timed_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.metrics.requests.labels(route, str(status)).inc()
                self.metrics.latency.labels(route).observe(time.perf_counter() - start)

        return await self.app(scope, receive, timed_send)
