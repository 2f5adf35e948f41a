"""The crypto service's domain metrics (labels never carry data, only versions and outcomes)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CryptoMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.items = Counter(
            "palisade_crypto_items_total",
            "Items processed, by operation and outcome.",
            ("operation", "outcome"),
            registry=registry,
        )
        self.key_encryptions = Gauge(
            "palisade_crypto_key_encryptions",
            "Encryptions made under each data-key version, across replicas.",
            ("key_version",),
            registry=registry,
        )
        self.key_usage_warning = Gauge(
            "palisade_crypto_key_usage_warning",
            "1 while the primary data key is past its warning threshold of encryptions.",
            registry=registry,
        )
        self.primary_version = Gauge(
            "palisade_crypto_primary_key_version",
            "The primary data-key version in use.",
            registry=registry,
        )
        self.keyring_reloads = Counter(
            "palisade_crypto_keyring_reloads_total",
            "Keyring file reloads, by outcome.",
            ("outcome",),
            registry=registry,
        )
        self.auto_rotations = Counter(
            "palisade_crypto_auto_rotations_total",
            "Primary data keys rotated automatically on reaching the usage threshold.",
            registry=registry,
        )
        self.subject_encryptions = Counter(
            "palisade_crypto_subject_encryptions_total",
            "Items encrypted under a data subject's key.",
            registry=registry,
        )
        self.subject_shreds = Counter(
            "palisade_crypto_subject_shreds_total",
            "ShredSubject calls and `subjects shred` commands, by outcome "
            "(shredded, already_shredded).",
            ("outcome",),
            registry=registry,
        )
