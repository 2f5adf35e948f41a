"""The visitors service's own metrics (the gRPC ones come from palisade.common.metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class VisitorsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows_by_data_key_version = Gauge(
            "palisade_visitors_rows_by_data_key_version",
            "Visitors whose PII envelopes are under each data key version (erased rows hold "
            "none); a version at 0 can be retired",
            ["version"],
            registry=registry,
        )
        self.rows_rewrapped = Counter(
            "palisade_visitors_rows_rewrapped_total",
            "Visitors moved to the primary data key version by the rewrap job",
            registry=registry,
        )
        self.rows_reindexed = Counter(
            "palisade_visitors_rows_reindexed_total",
            "Visitors whose blind-index tokens were recomputed under the primary index key",
            registry=registry,
        )
        self.rewrap_failures = Counter(
            "palisade_visitors_rewrap_failures_total",
            "Visitors the rewrap job could not move (left in place, logged by id)",
            registry=registry,
        )

    def set_rows_by_version(self, counts: dict[int, int]) -> None:
        self.rows_by_data_key_version.clear()
        for version, count in counts.items():
            self.rows_by_data_key_version.labels(str(version)).set(count)
