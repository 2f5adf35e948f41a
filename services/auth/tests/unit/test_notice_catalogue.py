"""The security-notice catalogue: whitelisted details, bounded values, one safe line each."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from palisade.auth.mail.notice_catalogue import (
    CATALOGUE,
    InvalidNoticeDetails,
    NoticeContext,
    UnknownNoticeKind,
    allowed_keys,
    check_details,
    notice_email,
    notice_kind,
    shown,
)
from palisade.auth.team.directory import InvalidPageToken, decode_page_token, encode_page_token
from palisade.common.api_key_format import display_prefix, generate, last4

CONTEXT = NoticeContext(
    occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    ip="203.0.113.9",
    location="Zurich, Switzerland",
    device="Firefox 120 on Linux",
    workspace_name="Acme",
)


def test_the_catalogue_and_its_whitelists() -> None:
    assert set(CATALOGUE) == {
        "api_key_created",
        "api_key_leak_reported",
        "api_key_revoked",
        "webhook_disabled",
    }
    common = {"key_name", "key_prefix", "key_last4", "key_type", "key_mode", "key_id"}
    assert allowed_keys(CATALOGUE["api_key_created"]) == common | {"scopes"}
    assert allowed_keys(CATALOGUE["api_key_leak_reported"]) == common | {"source"}
    assert allowed_keys(CATALOGUE["api_key_revoked"]) == common | {"reason"}
    # (key_prefix/key_last4 are accepted by every kind: shown together as one "Key" line.)
    assert allowed_keys(CATALOGUE["webhook_disabled"]) == {
        "webhook_id",
        "url_origin",
        "failing_since",
        "key_prefix",
        "key_last4",
    }
    with pytest.raises(UnknownNoticeKind):
        notice_kind("API_KEY_CREATED")


@pytest.mark.parametrize(
    "details",
    [
        {"secret": "x"},
        {"key_name": "x" * 201},
        {"key_prefix": "sk_live_AbCdE"},
        {"key_prefix": "xx_live_"},
        {"key_last4": "abc"},
        {"key_last4": "ab\ncd"},
        {"key_type": "root"},
        {"key_mode": "staging"},
    ],
)
def test_bad_details_are_refused(details) -> None:
    with pytest.raises(InvalidNoticeDetails):
        check_details(CATALOGUE["api_key_created"], details)


def test_values_show_as_one_line_with_controls_escaped() -> None:
    assert shown("a\r\nBcc: x@y\tz") == "a\\r\\nBcc: x@y\\tz"
    assert (
        shown("a\u2028b\u2029c\x00d\u202ee\u200bf") == "a\\u2028b\\u2029c\\u0000d\\u202ee\\u200bf"
    )
    assert shown("Café ☕ 東京") == "Café ☕ 東京"
    assert "\n" not in shown("\x85\x0b\x0c\x1c")


def test_a_whole_key_is_never_shown() -> None:
    key = generate("secret", "live")
    text = shown(f"found {key} in a gist")
    assert key not in text
    assert text == "found sk_live_…[redacted] in a gist"
    assert shown(display_prefix(key)) == display_prefix(key)  # a displayed prefix is fine


def test_the_mail_says_what_when_where_and_which_key() -> None:
    key = generate("publishable", "test")
    details = check_details(
        CATALOGUE["api_key_revoked"],
        {
            "key_prefix": display_prefix(key),
            "key_last4": last4(key),
            "key_name": "Widget",
            "reason": "revoked by\nan owner",
            "key_id": "",
        },
    )
    mail = notice_email(CATALOGUE["api_key_revoked"], details, CONTEXT, to="ada@example.com")
    assert mail.subject == "An API key of your Palisade workspace was revoked"
    lines = mail.text.splitlines()
    assert f"Key: {display_prefix(key)}…{last4(key)}" in lines
    assert "Reason: revoked by\\nan owner" in lines
    assert "When: 2026-01-02 03:04:05 UTC" in lines
    assert "IP address: 203.0.113.9 (Zurich, Switzerland)" in lines
    assert "Device: Firefox 120 on Linux" in lines
    assert "Workspace: Acme" in lines
    assert not any(line.startswith("Key id") for line in lines)  # empty values are left out
    assert key not in mail.text
    assert mail.html is None


def test_page_tokens_round_trip_and_refuse_anything_else() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    user_id = "usr_" + "0a" * 16
    assert decode_page_token(encode_page_token(moment, user_id)) == (moment, user_id)
    odd_ids = [encode_page_token(moment, u) for u in ("usr_1", user_id + "\x00", "")]
    for bad in ("", "!!", "e30", "eyJ0IjogIngiLCAidSI6ICJ5In0", "x" * 300, "é", *odd_ids):
        with pytest.raises(InvalidPageToken):
            decode_page_token(bad)


def test_the_webhook_disabled_mail_names_the_endpoint_and_its_destination() -> None:
    kind = CATALOGUE["webhook_disabled"]
    details = check_details(
        kind,
        {
            "webhook_id": "whk_" + "a" * 32,
            "url_origin": "https://hooks.example.com",
            "failing_since": "2026-01-01T00:00:00.000Z",
        },
    )
    mail = notice_email(kind, details, CONTEXT, to="ada@example.com")
    assert mail.subject == "A webhook endpoint of your Palisade workspace was disabled"
    assert "Endpoint: whk_" + "a" * 32 in mail.text
    assert "Destination: https://hooks.example.com" in mail.text
    assert "Failing since: 2026-01-01T00:00:00.000Z" in mail.text
    assert "Key:" not in mail.text
    with pytest.raises(InvalidNoticeDetails):
        check_details(kind, {"url": "https://hooks.example.com/secret-path"})
