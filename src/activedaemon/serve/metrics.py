"""Prometheus metrics of one service process (prometheus_client, text format at /metrics)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401 - re-exported
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Requests by outcome, latency, batch sizes, registry errors; one registry per app."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "activedaemon_predict_requests",
            "POST /v1/predict requests by audited outcome",
            ["outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "activedaemon_predict_latency_seconds",
            "POST /v1/predict latency, all outcomes",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "activedaemon_predict_inflight", "POST /v1/predict requests in flight", registry=r
        )
        self.batch_images = Histogram(
            "activedaemon_batch_images",
            "images per decoder and classifier pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.batch_requests = Histogram(
            "activedaemon_batch_requests",
            "requests per decoder and classifier pass",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.registry_errors = Counter(
            "activedaemon_registry_errors",
            "requests that failed because the registry was unreachable",
            registry=r,
        )

        self.key_failures = Counter(
            "activedaemon_admin_key_failures",
            "requests to owner endpoints with a missing or wrong admin key",
            registry=r,
        )

    def batch(self, requests: int, images: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_images.observe(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)
