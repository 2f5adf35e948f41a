"""Checks of what a person asks a key to be: each refusal has its own stable code.

Everything is checked before anything is written or encrypted, so a refused request leaves
nothing behind.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from palisade.apikeys.errors import (
    InvalidExpiry,
    InvalidMode,
    InvalidName,
    InvalidOrigin,
    InvalidOverlap,
    InvalidRateLimit,
    InvalidScope,
    InvalidType,
    OriginsRequired,
    ScopeNotAllowed,
)
from palisade.apikeys.model import (
    KEY_MODES,
    KEY_TYPES,
    PUBLISHABLE_SCOPES,
    SCOPES,
    KeySettings,
    RateLimit,
)
from palisade.apikeys.tables import NAME_CHARS
from palisade.common.origins import is_browser_origin

MAX_ORIGINS = 20
MAX_OVERLAP_SECONDS = 7 * 24 * 3600
# Per key: up to about 16,700 requests a second sustained (a busy backend integration), well
# inside what the gateway's limiter represents exactly.
MAX_RPM = 1_000_000
MAX_BURST = 100_000
_UNPRINTABLE_NAME = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= NAME_CHARS or _UNPRINTABLE_NAME.search(name):
        raise InvalidName()
    return name


def check_scopes(key_type: str, scopes: Sequence[str]) -> tuple[str, ...]:
    if not scopes or len(scopes) > len(SCOPES) * 4 or any(s not in SCOPES for s in scopes):
        raise InvalidScope()
    unique = tuple(sorted(set(scopes)))
    if key_type == "publishable" and not set(unique) <= PUBLISHABLE_SCOPES:
        raise ScopeNotAllowed()
    return unique


def check_origin(origin: str) -> str:
    # The exact form browsers send in the Origin header (palisade.common.origins, the rule the
    # gateway's CORS follows too): with anything else, the key would never match.
    if not is_browser_origin(origin):
        raise InvalidOrigin()
    return origin


def check_origins(key_type: str, origins: Sequence[str]) -> tuple[str, ...]:
    if key_type == "secret":
        if origins:
            raise InvalidOrigin("secret keys take no allowed origins")
        return ()
    if not origins:
        raise OriginsRequired()
    if len(origins) > MAX_ORIGINS:
        raise InvalidOrigin()
    checked = [check_origin(o) for o in origins]
    return tuple(dict.fromkeys(checked))  # duplicates dropped, order kept


def check_expiry(
    expires_at: datetime | None, *, now: datetime, max_lifetime: timedelta
) -> datetime | None:
    if expires_at is None:
        return None
    if expires_at <= now or expires_at > now + max_lifetime:
        raise InvalidExpiry()
    return expires_at


def check_rate_limit(limit: tuple[int, int] | None) -> RateLimit | None:
    if limit is None:
        return None
    rpm, burst = limit
    if not (1 <= rpm <= MAX_RPM and 1 <= burst <= MAX_BURST):
        raise InvalidRateLimit()
    return RateLimit(rpm, burst)


def check_overlap(overlap_seconds: int | None, default: int) -> int:
    if overlap_seconds is None:
        return default
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise InvalidOverlap()
    return overlap_seconds


def key_settings(
    *,
    name: str,
    key_type: str,
    mode: str,
    scopes: Sequence[str],
    allowed_origins: Sequence[str],
    expires_at: datetime | None,
    rate_limit: tuple[int, int] | None,
    now: datetime,
    max_lifetime: timedelta,
) -> KeySettings:
    """The settings of a new key, or the first rule the request breaks."""
    checked_name = check_name(name)
    if key_type not in KEY_TYPES:
        raise InvalidType()
    mode = mode or "live"
    if mode not in KEY_MODES:
        raise InvalidMode()
    return KeySettings(
        name=checked_name,
        type=key_type,
        mode=mode,
        scopes=check_scopes(key_type, scopes),
        allowed_origins=check_origins(key_type, allowed_origins),
        rate_limit=check_rate_limit(rate_limit),
        expires_at=check_expiry(expires_at, now=now, max_lifetime=max_lifetime),
    )
