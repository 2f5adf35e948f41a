"""Create-request rules, each with its stable code (no sockets, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from palisade.apikeys import errors
from palisade.apikeys.model import RateLimit
from palisade.apikeys.validation import (
    check_origin,
    check_overlap,
    check_rate_limit,
    check_scopes,
    key_settings,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _settings(**overrides):
    values = {
        "name": "k",
        "key_type": "secret",
        "mode": "",
        "scopes": ["chats:read"],
        "allowed_origins": [],
        "expires_at": None,
        "rate_limit": None,
        "now": NOW,
        "max_lifetime": timedelta(days=5 * 366),
    }
    values.update(overrides)
    return key_settings(**values)


def test_defaults() -> None:
    settings = _settings(name="  Backend  ", scopes=["team:read", "chats:read", "team:read"])
    assert settings.name == "Backend"
    assert settings.mode == "live"
    assert settings.scopes == ("chats:read", "team:read")
    assert settings.rate_limit is None


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.com",
        "http://localhost:3000",
        "https://a-b.c.example.co.uk:8443",
        "http://127.0.0.1:8080",
        "https://[::1]:8443",
    ],
)
def test_good_origins(origin: str) -> None:
    assert check_origin(origin) == origin


@pytest.mark.parametrize(
    "origin",
    [
        "",
        "example.com",
        "https://",
        "https://Example.com",
        "https://example.com/",
        "https://example.com/a",
        "https://example.com?x",
        "https://example.com#f",
        "https://u:p@example.com",
        "https://example.com:0",
        "https://example.com:65536",
        "https://example.com:443",
        "http://example.com:80",
        "https://example.com:",
        "https://-bad.com",
        "https://exa mple.com",
        "https://exämple.com",
        "ws://example.com",
        "null",
        "https://example.com\r\n",
        "https://" + "a" * 300 + ".com",
    ],
)
def test_bad_origins(origin: str) -> None:
    with pytest.raises(errors.InvalidOrigin):
        check_origin(origin)


def test_publishable_rules() -> None:
    with pytest.raises(errors.ScopeNotAllowed):
        check_scopes("publishable", ["visitors:read"])
    assert check_scopes("publishable", ["visitors:write", "chats:write"])
    with pytest.raises(errors.OriginsRequired):
        _settings(key_type="publishable", scopes=["chats:write"])
    with pytest.raises(errors.InvalidOrigin):
        _settings(allowed_origins=["https://a.io"])  # secret keys take none
    settings = _settings(
        key_type="publishable",
        scopes=["chats:write"],
        allowed_origins=["https://a.io", "https://a.io"],
    )
    assert settings.allowed_origins == ("https://a.io",)


def test_limits_and_overlaps() -> None:
    assert check_rate_limit((1, 1)) == RateLimit(1, 1)
    assert check_rate_limit((1_000_000, 100_000)) == RateLimit(1_000_000, 100_000)
    for bad in [(0, 1), (1, 0), (1_000_001, 1), (1, 100_001), (-1, -1)]:
        with pytest.raises(errors.InvalidRateLimit):
            check_rate_limit(bad)
    assert check_overlap(None, 3600) == 3600
    assert check_overlap(0, 3600) == 0
    assert check_overlap(604_800, 3600) == 604_800
    for bad in (-1, 604_801):
        with pytest.raises(errors.InvalidOverlap):
            check_overlap(bad, 3600)


def test_expiry_window() -> None:
    assert _settings(expires_at=NOW + timedelta(seconds=1)).expires_at
    for bad in (NOW, NOW - timedelta(days=1), NOW + timedelta(days=5 * 366 + 1)):
        with pytest.raises(errors.InvalidExpiry):
            _settings(expires_at=bad)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"name": ""}, errors.InvalidName),
        ({"name": " " * 5}, errors.InvalidName),
        ({"name": "x" * 101}, errors.InvalidName),
        ({"name": "a\x00b"}, errors.InvalidName),
        ({"key_type": "Secret"}, errors.InvalidType),
        ({"mode": "LIVE"}, errors.InvalidMode),
        ({"scopes": []}, errors.InvalidScope),
        ({"scopes": ["chats:read "]}, errors.InvalidScope),
        ({"scopes": ["chats:read"] * 100}, errors.InvalidScope),
    ],
)
def test_each_rule_has_its_error(overrides, error) -> None:
    with pytest.raises(error):
        _settings(**overrides)
