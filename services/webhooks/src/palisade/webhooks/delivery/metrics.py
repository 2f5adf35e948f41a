"""The delivery worker's metrics. Labels carry outcomes and error codes, never an endpoint,
a workspace or a URL (a per-endpoint series would grow with the customer base, and a URL may
hold a receiver's token)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Receivers answer in milliseconds to the 15 s timeout.
_ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20)


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.attempts = Counter(
            "palisade_webhooks_attempts_total",
            "Delivery attempts, by result: succeeded, or the error code (http_<status> for an "
            "answer that was not 2xx).",
            ("result",),
            registry=registry,
        )
        self.deliveries = Counter(
            "palisade_webhooks_deliveries_total",
            "Deliveries settled, by outcome: succeeded, retrying, failed (out of attempts), "
            "gone (410: endpoint disabled).",
            ("outcome",),
            registry=registry,
        )
        self.attempt_seconds = Histogram(
            "palisade_webhooks_attempt_seconds",
            "Time of one delivery attempt, from DNS lookup to the last body byte.",
            buckets=_ATTEMPT_BUCKETS,
            registry=registry,
        )
        self.disabled = Counter(
            "palisade_webhooks_endpoints_disabled_total",
            "Endpoints disabled by the worker, by reason (gone, failing).",
            ("reason",),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "palisade_webhooks_queue_depth",
            "Pending deliveries of enabled endpoints (refreshed periodically).",
            registry=registry,
        )
        self.oldest_pending_seconds = Gauge(
            "palisade_webhooks_oldest_pending_seconds",
            "Age of the oldest pending delivery of an enabled endpoint; 0 when none.",
            registry=registry,
        )
        self.disabled_endpoints = Gauge(
            "palisade_webhooks_disabled_endpoints",
            "Endpoints currently disabled, whatever the reason (refreshed periodically).",
            registry=registry,
        )
        self.in_flight = Gauge(
            "palisade_webhooks_attempts_in_flight",
            "Attempts under way in this process.",
            registry=registry,
        )
        self.events_queued = Counter(
            "palisade_webhooks_intake_deliveries_queued_total",
            "Deliveries queued by the intake from audit's stream.",
            registry=registry,
        )
        self.events_seen = Counter(
            "palisade_webhooks_intake_events_total",
            "Events read from audit's stream (matching an endpoint or not).",
            registry=registry,
        )
        self.stream_restarts = Counter(
            "palisade_webhooks_intake_stream_restarts_total",
            "Times the audit stream ended or failed and was resumed from the cursor, by code.",
            ("code",),
            registry=registry,
        )
