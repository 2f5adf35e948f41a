"""The crypto service's settings, read once from PALISADE_CRYPTO_* (and shared PALISADE_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from palisade.common.settings import CommonSettings

SERVICE_NAME = "crypto"


class CryptoSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="PALISADE_CRYPTO_", frozen=True, extra="ignore")

    grpc_port: int = Field(default=50051, ge=0, le=65535)
    metrics_port: int = Field(default=9101, ge=0, le=65535)
    # The keyring (versioned data and index keys). Default: <data_dir>/keys/keyring.json.
    # In Kubernetes: a mounted Secret, with create_missing_keys=false.
    keyring_file: Path | None = None
    # How often the keyring file is checked for changes (hot reload).
    keyring_reload_seconds: float = Field(default=1.0, gt=0)
    # How often the other replicas' encryption counts are read (for warnings and rotation).
    usage_sync_seconds: float = Field(default=5.0, gt=0)
    # Encryptions leased from the database at a time (a restart wastes at most one lease).
    usage_lease_size: int = Field(default=16384, ge=1)
    # 2^32 random-IV encryptions per key is the AES-GCM bound; stay far below it.
    usage_warn_threshold: int = Field(default=2**30, ge=1)
    # Rotate the primary data key automatically at this count (when the keyring is writable).
    usage_rotate_threshold: int = Field(default=2**31, ge=1)
    # Refuse to encrypt under one version past this count (fail closed rather than risk reuse).
    # Leases make the count an upper bound across replicas, restarts and database outages.
    usage_hard_limit: int = Field(default=3 * 2**30, ge=1, lt=2**32)
    # Rotate automatically (needs a writable keyring file; a read-only Secret only warns).
    auto_rotate: bool = True
    # Most items in one Encrypt/Decrypt/BlindIndex/Rewrap call, and most bytes in one item.
    max_batch_items: int = Field(default=1000, ge=1)
    max_item_bytes: int = Field(default=64 * 1024, ge=1)

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> CryptoSettings:
        if not (self.usage_warn_threshold <= self.usage_rotate_threshold < self.usage_hard_limit):
            raise ValueError(
                "need usage_warn_threshold <= usage_rotate_threshold < usage_hard_limit"
            )
        return self

    def resolved_keyring_file(self) -> Path:
        return self.keyring_file or self.data_dir / "keys" / "keyring.json"
