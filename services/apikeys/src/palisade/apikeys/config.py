"""The apikeys service's settings, read once from PALISADE_APIKEYS_* (and shared PALISADE_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from palisade.common.settings import CommonSettings

SERVICE_NAME = "apikeys"


class ApiKeysSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="PALISADE_APIKEYS_", frozen=True, extra="ignore")

    grpc_port: int = Field(default=50053, ge=0, le=65535)
    metrics_port: int = Field(default=9103, ge=0, le=65535)
    # Where the crypto service listens (each key's recoverable secret is encrypted there).
    crypto_target: str = "127.0.0.1:50051"
    # Where the auth service listens (security notices: key created, leak reported, revoked).
    auth_target: str = "127.0.0.1:50052"
    # Where the audit service listens: the security-event outbox is forwarded there in
    # batches (palisade.common.audit_forwarder); while audit is away, events wait in the outbox.
    audit_target: str = "127.0.0.1:50054"
    # Events per Ingest call (audit takes at most 1000), and how often the forwarder looks for
    # new events once the outbox is drained.
    audit_batch_size: int = Field(default=100, ge=1, le=1000)
    audit_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # Redis for the key revocation channel; unset: the in-process feed, served to the
    # gateway by the WatchRevocations stream (the embedded default's single apikeys process).
    redis_url: str | None = None
    # How often the revocation feed sends a heartbeat (gateways stop trusting their key caches
    # when they hear none for about 2 s; keep this well under their deadline).
    revocation_heartbeat_seconds: float = Field(default=0.5, gt=0, le=1.0)

    # The rate limit of a key created without one (the gateway enforces it per key).
    default_rate_limit_rpm: int = Field(default=600, ge=1, le=100_000)
    default_rate_limit_burst: int = Field(default=100, ge=1, le=10_000)
    # Creating, rotating and revealing keys: the session's login must be this recent.
    recent_auth_seconds: int = Field(default=600, ge=30)
    # Longest lifetime a key may be given with expiresAt (default about 5 years).
    max_key_lifetime_days: int = Field(default=5 * 366, ge=1)
    # Rotation overlap: the old key keeps working this long unless the request says otherwise.
    default_overlap_seconds: int = Field(default=3600, ge=0, le=7 * 24 * 3600)
    # Most usages in one RecordKeyUsage call (the gateway batches them).
    max_usage_batch: int = Field(default=1000, ge=1, le=10_000)
    # Security notices go to auth from an outbox: how often due ones are looked for, and
    # after how many failed attempts one is given up (auth deduplicates by idempotency key).
    notice_poll_seconds: float = Field(default=5.0, gt=0)
    notice_max_attempts: int = Field(default=10, ge=1)
    # How often expired keys are looked for, to record their `expired` history entry and
    # security event (a key stops working at its expiry regardless; this is the record).
    expiry_record_seconds: float = Field(default=30.0, gt=0)
