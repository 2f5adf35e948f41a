"""The audit service's domain metrics. Labels carry event types, sources and outcomes, never a
workspace or a person (a per-workspace series would grow with the customer base)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.ingested = Counter(
            "palisade_audit_events_ingested_total",
            "Events stored, by type and by the service that sent them.",
            ("type", "source"),
            registry=registry,
        )
        self.duplicates = Counter(
            "palisade_audit_ingest_duplicates_total",
            "Events sent again (already stored, or twice in one batch), by source.",
            ("source",),
            registry=registry,
        )
        self.rejected = Counter(
            "palisade_audit_ingest_batches_rejected_total",
            "Ingest batches refused whole, by source and error code.",
            ("source", "code"),
            registry=registry,
        )
        self.ingest_seconds = Histogram(
            "palisade_audit_ingest_seconds",
            "Time to store one Ingest batch (validation to commit).",
            buckets=_INGEST_BUCKETS,
            registry=registry,
        )
        self.checkpoints = Counter(
            "palisade_audit_checkpoints_signed_total",
            "Checkpoints signed, by kind (periodic, on_demand, retention).",
            ("kind",),
            registry=registry,
        )
        self.verify_failures = Counter(
            "palisade_audit_verify_failures_total",
            "Problems found by chain verification before a checkpoint is signed, by what broke "
            "(edited, deleted, inserted, reordered, checkpoint_mismatch, bad_signature).",
            ("what",),
            registry=registry,
        )
        self.purged = Counter(
            "palisade_audit_events_purged_total",
            "Events removed by the retention purge.",
            registry=registry,
        )
        self.witness_failures = Counter(
            "palisade_audit_witness_failures_total",
            "Signed checkpoints that could not be appended to the witness file.",
            registry=registry,
        )
