"""The gateway's metrics: requests by route template and status, latency, token cache use."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        # Route templates (not raw paths) as labels: bounded, and no ids or secrets in labels.
        self.requests = Counter(
            "palisade_gateway_requests_total",
            "HTTP requests by route and status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "palisade_gateway_request_seconds",
            "HTTP request latency by route.",
            ("route", "method"),
            buckets=_BUCKETS,
            registry=registry,
        )
        self.token_cache = Counter(
            "palisade_gateway_token_cache_lookups_total",
            "Access-token cache lookups.",
            ("result",),
            registry=registry,
        )
