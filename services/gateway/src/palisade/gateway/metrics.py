"""The gateway's metrics: requests by route template and status, latency, token and key cache
use."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

# Methods a client may send are any token at all: others are counted as "other", so a client
# cannot grow the number of series (and the gateway's memory) at will.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

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
        self.key_cache = Counter(
            "palisade_gateway_key_cache_lookups_total",
            "API-key cache lookups (a miss asks the apikeys service).",
            ("result",),
            registry=registry,
        )
        self._key_hit = self.key_cache.labels("hit")
        self._key_miss = self.key_cache.labels("miss")
        # Labelled children, resolved once: labels() validates and locks on every call, a
        # measurable share of a cached request's cost (PERFORMANCE.md P2).
        self._hit = self.token_cache.labels("hit")
        self._miss = self.token_cache.labels("miss")
        self._per_request: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Counts one answered request; route is a template (or "unmatched"), never a path."""
        method = method if method in _METHODS else "other"
        key = (route, method, status)
        children = self._per_request.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
            self._per_request[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def token_cache_lookup(self, hit: bool) -> None:
        (self._hit if hit else self._miss).inc()

    def key_cache_lookup(self, hit: bool) -> None:
        (self._key_hit if hit else self._key_miss).inc()
