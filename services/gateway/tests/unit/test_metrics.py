"""The gateway's metrics: bounded label values, whatever clients send."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from palisade.gateway.metrics import GatewayMetrics


def test_unknown_methods_share_one_series_and_children_are_reused() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    for method in ("BREW", "PROPFIND", "X" * 100):
        metrics.request("unmatched", method, 405, 0.001)
    metrics.request("/v1/whoami", "GET", 200, 0.001)
    metrics.request("/v1/whoami", "GET", 200, 0.001)
    total = "palisade_gateway_requests_total"
    assert (
        registry.get_sample_value(total, {"route": "unmatched", "method": "other", "status": "405"})
        == 3
    )
    assert (
        registry.get_sample_value(total, {"route": "/v1/whoami", "method": "GET", "status": "200"})
        == 2
    )
    methods = {
        sample.labels["method"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == total
    }
    assert methods == {"other", "GET"}


def test_token_cache_lookups_by_result() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.token_cache_lookup(True)
    metrics.token_cache_lookup(True)
    metrics.token_cache_lookup(False)
    lookups = "palisade_gateway_token_cache_lookups_total"
    assert registry.get_sample_value(lookups, {"result": "hit"}) == 2
    assert registry.get_sample_value(lookups, {"result": "miss"}) == 1
