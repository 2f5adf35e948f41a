"""The auth service's settings, read once from PALISADE_AUTH_* (and shared PALISADE_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from palisade.common.settings import CommonSettings

SERVICE_NAME = "auth"


class AuthSettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="PALISADE_AUTH_", frozen=True, extra="ignore")

    grpc_port: int = Field(default=50052, ge=0, le=65535)
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    # Where the crypto service listens (PII and refresh successors are encrypted there).
    crypto_target: str = "127.0.0.1:50051"
    # Redis for login throttling and the revocation channel; unset: in-process stand-ins
    # (correct for the single auth process of the embedded default).
    redis_url: str | None = None
    # A MaxMind DB file (e.g. GeoLite2-City.mmdb) to show where sessions are; unset: no location.
    geoip_database: Path | None = None

    # Argon2id parameters (RFC 9106 / OWASP minimum: m=19456 KiB, t=2, p=1). Hashes made with
    # other parameters are re-hashed at the next successful login.
    argon2_memory_kib: int = Field(default=19456, ge=19456)
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_parallelism: int = Field(default=1, ge=1)
    # Threads that hash passwords, off the event loop (default: one per core).
    hashing_threads: int | None = Field(default=None, ge=1)

    access_token_seconds: int = Field(default=3600, ge=60)
    refresh_token_seconds: int = Field(default=24 * 3600, ge=60)
    remember_me_refresh_token_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    # After a refresh token is rotated, presenting it again within this many seconds returns
    # the same successor (concurrent requests); later, it revokes the whole family.
    refresh_grace_seconds: int = Field(default=60, ge=0, le=300)
    # A session ends this long after login however often it is refreshed.
    session_absolute_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    remember_me_session_absolute_seconds: int = Field(default=30 * 24 * 3600, ge=60)

    # Login throttling: failures counted per client IP, per (account, IP) and per account;
    # a count decays after its window passes without failures; a success resets the account's.
    throttle_ip_failures: int = Field(default=50, ge=1)
    throttle_account_ip_failures: int = Field(default=10, ge=1)
    throttle_account_failures: int = Field(default=100, ge=1, le=100)
    throttle_window_seconds: int = Field(default=900, ge=1)
    throttle_account_window_seconds: int = Field(default=3600, ge=1)
