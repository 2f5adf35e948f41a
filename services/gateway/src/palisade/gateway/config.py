"""The gateway's settings, read once from PALISADE_GATEWAY_* (and shared PALISADE_*)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import SettingsConfigDict

from palisade.common.settings import CommonSettings

SERVICE_NAME = "gateway"


class ExtraUpstream(BaseModel):
    """One more gRPC service behind the gateway, its routes taken from its annotations."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The generated module holding the service's file descriptor, e.g. "palisade_api.x.v1.x_pb2".
    proto_module: str
    # The service's name in that file, e.g. "VisitorService".
    service: str
    # Where it listens (host:port).
    target: str


class GatewaySettings(CommonSettings):
    model_config = SettingsConfigDict(env_prefix="PALISADE_GATEWAY_", frozen=True, extra="ignore")

    # Where clients connect (HTTP).
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    # The services behind the gateway.
    auth_target: str = "127.0.0.1:50052"
    apikeys_target: str = "127.0.0.1:50053"
    # The audit service: people's security-log queries, checkpoints and signing keys.
    audit_target: str = "127.0.0.1:50054"
    # The visitors service: visitors (PII encrypted there) and chats with their messages.
    visitors_target: str = "127.0.0.1:50055"
    # The webhooks service: webhook endpoints, their secrets, deliveries and the event types.
    webhooks_target: str = "127.0.0.1:50056"
    # More services, by the audience their caller assertions name (JSON in the environment:
    # {"echo": {"proto_module": "...", "service": "...", "target": "host:port"}}). Empty by
    # default; the benchmarks put a bare echo service here (bench/p3_forwarded.py).
    extra_upstreams: dict[str, ExtraUpstream] = Field(default_factory=dict)
    # Proxies (CIDRs) whose X-Forwarded-For is believed; empty: the socket peer is the client.
    trusted_proxies: list[str] = Field(default_factory=list)
    # Largest request body accepted (bytes); more gets 413.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # Validated access tokens kept in memory (evicted by the revocation feed, and by age).
    token_cache_entries: int = Field(default=100_000, ge=1)
    token_cache_seconds: float = Field(default=60.0, gt=0)
    # The token cache is emptied (and nothing cached) when the revocation feed stays silent
    # this long: auth sends a heartbeat every 0.5 s, so this means a dead or half-open feed.
    revocation_heartbeat_deadline_seconds: float = Field(default=2.0, gt=0)
    # Verified API keys kept in memory (evicted by the key revocation feed, and by age).
    key_cache_entries: int = Field(default=100_000, ge=1)
    key_cache_seconds: float = Field(default=60.0, gt=0)
    # Rate limits: counters in Redis when set (shared by every replica), else in this process
    # (exact on one machine). Every authenticated request spends its person's limit (a key's
    # creator for key requests); key requests also spend the key's own (set per key).
    redis_url: str | None = None
    user_rate_limit_per_minute: int = Field(default=3000, ge=1, le=60_000_000)
    user_rate_limit_burst: int = Field(default=300, ge=1, le=1_000_000)
    # Key lookups that miss the key cache, and leak reports, per client network (an IPv4
    # address or IPv6 /64): checksums are public, so made-up keys that pass them are free to
    # make, and each would otherwise cost a call to the key service.
    client_lookup_limit_per_minute: int = Field(default=600, ge=1, le=60_000_000)
    client_lookup_limit_burst: int = Field(default=100, ge=1, le=1_000_000)
    # With Redis unreachable: False (the default) answers 503 rather than serve unlimited
    # traffic; True lets requests through unlimited. Bearer tokens and secret keys follow the
    # first, publishable keys (browser traffic, often the product's widget) the second.
    rate_limit_fail_open: bool = False
    rate_limit_fail_open_publishable: bool = False
    # Deadline for one call to a backend service.
    upstream_timeout_seconds: float = Field(default=10.0, gt=0)
    # Browser origins allowed to call the API (CORS); none by default.
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator("extra_upstreams")
    @classmethod
    def _auth_is_built_in(cls, value: dict[str, ExtraUpstream]) -> dict[str, ExtraUpstream]:
        for built_in in ("auth", "apikeys", "audit", "visitors", "webhooks"):
            if built_in in value:
                raise ValueError(f"{built_in} is built in (set {built_in}_target instead)")
        return value
