"""The gateway's settings, read once from PALISADE_GATEWAY_* (and shared PALISADE_*)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from palisade.common.settings import CommonSettings

SERVICE_NAME = "gateway"


class GatewaySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="PALISADE_GATEWAY_", frozen=True, extra="ignore")

    # Where clients connect (HTTP).
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    # The services behind the gateway.
    auth_target: str = "127.0.0.1:50052"
    # Proxies (CIDRs) whose X-Forwarded-For is believed; empty: the socket peer is the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Largest request body accepted (bytes); more gets 413.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Validated access tokens kept in memory (evicted by the revocation feed, and by age).
    token_cache_entries: int = Field(default=100_000, ge=1)
    token_cache_seconds: float = Field(default=60.0, gt=0)
    # Deadline for one call to a backend service.
    upstream_timeout_seconds: float = Field(default=10.0, gt=0)
    # Browser origins allowed to call the API (CORS); none by default.
    cors_origins: list[str] = Field(default_factory=list)
