"""Validation details the integration tests do not spell out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from palisade.audit import errors
from palisade.audit.ingest.validation import validate
from palisade_api.audit.v1 import audit_pb2 as pb

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _event(**fields) -> pb.IngestEvent:
    fields.setdefault("type", "session.login_succeeded")
    message = pb.IngestEvent(event_id=uuid.uuid4().hex, outcome="success", **fields)
    message.occurred_at.FromDatetime(NOW - timedelta(seconds=5))
    return message


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("usr_abc", "user:usr_abc"),
        ("key_abc", "apikey:key_abc"),
        ("vis_abc", "visitor:vis_abc"),
        ("inv_abc", "invitation:inv_abc"),
        ("user:usr_abc", "user:usr_abc"),
        ("", ""),
    ],
)
def test_subjects_are_stored_prefixed(raw: str, stored: str) -> None:
    assert validate(_event(subject=raw), 0, source="auth", latest=NOW).subject == stored


@pytest.mark.parametrize("raw", ["abc", "zzz_abc", "user:", "user:usr abc", "usr_" + "a" * 80])
def test_unknown_subjects(raw: str) -> None:
    with pytest.raises(errors.InvalidSubject):
        validate(_event(subject=raw), 0, source="auth", latest=NOW)


def test_a_device_description_in_user_agent_becomes_the_device() -> None:
    # What services' outboxes hold (and a forwarder may send as user_agent).
    event = validate(_event(user_agent="Firefox 120 on Linux"), 0, source="auth", latest=NOW)
    assert (event.device.browser, event.device.os, event.device.kind) == (
        "Firefox 120",
        "Linux",
        "desktop",
    )
    assert event.user_agent == ""  # not a user agent: not kept as one
    mobile = _event(device="Chrome Mobile 120 on Android")
    described = validate(mobile, 0, source="auth", latest=NOW)
    assert described.device.kind == "mobile"


def test_no_client_means_no_device() -> None:
    event = validate(_event(), 0, source="auth", latest=NOW)
    assert (event.device.browser, event.device.os, event.device.kind) == ("", "", "")
    assert event.actor == "system"


def test_client_text_is_cleaned_not_refused() -> None:
    event = validate(
        _event(reason="bad\r\nline", details={"passkey_name": "My\x00 key\u202e"}),
        0,
        source="auth",
        latest=NOW,
    )
    assert event.reason == "badline"
    assert event.details == '{"passkey_name":"My key"}'


def test_ips_are_canonical() -> None:
    assert validate(_event(ip="2001:DB8::1"), 0, source="auth", latest=NOW).ip == "2001:db8::1"


def test_microseconds_are_kept_and_nanoseconds_dropped() -> None:
    message = _event()
    message.occurred_at.nanos = 123_456_789
    assert validate(message, 0, source="auth", latest=NOW).occurred_at.microsecond == 123_456


def test_a_service_may_emit_only_its_own_types() -> None:
    with pytest.raises(errors.EventTypeNotAllowed) as refused:
        validate(_event(), 3, source="apikeys", latest=NOW)
    assert refused.value.index == 3
    assert refused.value.code == "event_type_not_allowed"
    assert "session.login_succeeded" in str(refused.value)
    assert validate(_event(type="apikey.created"), 0, source="apikeys", latest=NOW)
    with pytest.raises(errors.EventTypeNotAllowed):
        validate(_event(type="apikey.created"), 0, source="auth", latest=NOW)
