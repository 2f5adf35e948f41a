"""The audit service's settings, read once from PALISADE_AUDIT_* (and shared PALISADE_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from palisade.common.settings import CommonSettings

SERVICE_NAME = "audit"


class AuditSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="PALISADE_AUDIT_", frozen=True, extra="ignore")

    grpc_port: int = Field(default=50054, ge=0, le=65535)
    metrics_port: int = Field(default=9104, ge=0, le=65535)
    # Where the crypto service listens (events' PII fields are encrypted there before they are
    # hashed and stored, and decrypted for reads).
    crypto_target: str = "127.0.0.1:50051"
    # Where the auth service listens (its workspace directory: events for a workspace auth
    # does not know are refused).
    auth_target: str = "127.0.0.1:50052"
    # A MaxMind DB file (e.g. GeoLite2-City.mmdb) to record where an event's IP is; unset: no
    # location is recorded.
    geoip_database: Path | None = None

    # The Ed25519 checkpoint signing keys (the current one and the public halves of the earlier
    # ones). Default: <data_dir>/keys/audit-signing.json, created on first run when
    # create_missing_keys; in Kubernetes a mounted Secret. Never in the database.
    signing_key_file: Path | None = None
    # Every signed checkpoint is appended here (JSON lines, as GET /v1/audit/checkpoint serves
    # them), outside the database: `palisade-audit verify` checks each chain still holds its
    # latest witnessed checkpoint, which a tail cut off together with its checkpoints does not.
    # Default: audit-witness.jsonl beside the signing key file. Must be writable (in Kubernetes
    # a volume of its own, not the read-only Secret); record_witness=false: none is kept.
    witness_file: Path | None = None
    record_witness: bool = True
    # The key that authenticates page tokens (HMAC-SHA256), shared by every replica. Default:
    # <data_dir>/keys/audit-page-tokens.json, created like the signing key.
    page_token_key_file: Path | None = None

    # Most events in one Ingest call (more is INVALID_ARGUMENT batch_too_large).
    max_batch_events: int = Field(default=1000, ge=1, le=10_000)
    # Most items in one call to crypto (its own MAX_BATCH_ITEMS, 1000 by default): a batch
    # whose PII fields are more than this is encrypted in several calls, sent at once.
    crypto_batch_items: int = Field(default=1000, ge=1)
    # How far ahead of this service's clock an event's occurred_at may be (clock skew).
    max_clock_skew_seconds: int = Field(default=300, ge=0, le=86_400)
    # Workspace ids known to exist, remembered per process (ids are never reused).
    directory_cache_entries: int = Field(default=1_000_000, ge=0)

    # How often every chain that grew since its last checkpoint gets a new signed one.
    checkpoint_interval_seconds: float = Field(default=3600.0, gt=0)
    # Events are kept this many days (0: forever, the default). Older ones are purged per
    # workspace after a checkpoint is signed at the purge boundary, so the rest still verifies.
    retention_days: int = Field(default=0, ge=0)
    # How often the purge job runs (only when retention_days is set).
    purge_interval_seconds: float = Field(default=3600.0, gt=0)

    # The services that may read the log back through StreamEvents (its subscribers: webhook
    # delivery). Recording services (auth, apikeys) only write: a compromised one must not read
    # every workspace's events, PII included, from the stream.
    stream_subscribers: list[str] = Field(default_factory=lambda: ["webhooks"])
    # StreamEvents: events sent per message batch, and how often subscribers look for events
    # other replicas stored (events stored by this replica are pushed at once).
    stream_batch_events: int = Field(default=500, ge=1, le=5000)
    stream_poll_seconds: float = Field(default=1.0, gt=0)

    def resolved_signing_key_file(self) -> Path:
        return self.signing_key_file or self.data_dir / "keys" / "audit-signing.json"

    def resolved_witness_file(self) -> Path:
        return self.witness_file or self.resolved_signing_key_file().parent / "audit-witness.jsonl"

    def resolved_page_token_key_file(self) -> Path:
        return self.page_token_key_file or self.data_dir / "keys" / "audit-page-tokens.json"
