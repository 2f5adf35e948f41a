"""What the service knows about a key and its history, as plain values (no SQL or gRPC)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

SCOPES = frozenset(
    {"chats:read", "chats:write", "visitors:read", "visitors:write", "team:read", "webhooks:manage"}
)
# Publishable keys live in browsers: only what a website's visitors may do.
PUBLISHABLE_SCOPES = frozenset({"visitors:write", "chats:write"})
KEY_TYPES = ("secret", "publishable")
KEY_MODES = ("live", "test")
MANAGER_ROLES = frozenset({"owner", "admin"})

ACTIVE, EXPIRING, EXPIRED, REVOKED = "active", "expiring", "expired", "revoked"


@dataclass(frozen=True)
class RateLimit:
    requests_per_minute: int
    burst: int


@dataclass(frozen=True)
class KeySettings:
    """What a new key is made with (a rotation copies these from the old key)."""

    name: str
    type: str
    mode: str
    scopes: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    rate_limit: RateLimit | None  # None: the service default
    expires_at: datetime | None


@dataclass(frozen=True)
class KeyRecord:
    id: str
    workspace_id: str
    name: str
    type: str
    mode: str
    prefix: str
    last4: str
    scopes: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    rate_limit: RateLimit | None
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    revoke_reason: str | None
    replaced_by: str | None
    overlap_ends_at: datetime | None
    last_used_at: datetime | None
    last_used_ip: str | None

    @property
    def settings(self) -> KeySettings:
        return KeySettings(
            name=self.name,
            type=self.type,
            mode=self.mode,
            scopes=self.scopes,
            allowed_origins=self.allowed_origins,
            rate_limit=self.rate_limit,
            expires_at=self.expires_at,
        )

    @property
    def valid_until(self) -> datetime | None:
        return valid_until(self.expires_at, self.overlap_ends_at)

    def state(self, now: datetime) -> str:
        return key_state(now, self.revoked_at, self.expires_at, self.overlap_ends_at)


def valid_until(expires_at: datetime | None, overlap_ends_at: datetime | None) -> datetime | None:
    """When a key stops working: its expiry or its rotation overlap's end, whichever is first."""
    ends = [t for t in (expires_at, overlap_ends_at) if t is not None]
    return min(ends) if ends else None


def key_state(
    now: datetime,
    revoked_at: datetime | None,
    expires_at: datetime | None,
    overlap_ends_at: datetime | None,
) -> str:
    if revoked_at is not None:
        return REVOKED
    until = valid_until(expires_at, overlap_ends_at)
    if until is not None and until <= now:
        return EXPIRED
    if overlap_ends_at is not None:
        return EXPIRING
    return ACTIVE


@dataclass(frozen=True)
class Actor:
    """Who did something to a key, from where (what the history and security events keep)."""

    principal: str  # "user:<id>", "anonymous", "system" or "service:<name>"
    ip: str | None = None
    device: str | None = None
    user_agent: str | None = None  # for auth's notice only; never stored in our tables

    @property
    def user_id(self) -> str | None:
        prefix = "user:"
        return self.principal[len(prefix) :] if self.principal.startswith(prefix) else None


SYSTEM = Actor("system")


@dataclass(frozen=True)
class KeyEvent:
    type: str  # created, rotated, revoked, expired, revealed, leak_reported
    occurred_at: datetime
    actor: str
    ip: str | None = None
    device: str | None = None
    source: str | None = None
    id: int = 0  # 0: synthesized (expired), not a stored row
    # A person's ip and device, sealed under their subject key (history_seal.py); ip and
    # device are then None until the history's reader opens it.
    client_ct: bytes | None = None


@dataclass(frozen=True)
class Verified:
    """What the gateway learns about a key that works now."""

    key_id: str
    workspace_id: str
    type: str
    mode: str
    scopes: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    rate_limit: RateLimit
    created_by: str
    valid_until: datetime | None
    valid_until_is_expiry: bool


@dataclass(frozen=True)
class Usage:
    key_id: str
    used_at: datetime
    ip: str | None


def expired_event(record: KeyRecord, now: datetime) -> KeyEvent | None:
    """The `expired` history entry of a key whose validity ended by `now` (its expiry, or its
    rotation overlap's end), or None: still valid, or revoked before it could expire."""
    until = record.valid_until
    if until is None or until > now:
        return None
    if record.revoked_at is not None and record.revoked_at <= until:
        return None
    return KeyEvent("expired", until, SYSTEM.principal)
