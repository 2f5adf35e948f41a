"""The canonical encoding: every field counts, and no two events share an encoding."""

from __future__ import annotations

from dataclasses import fields, replace
from datetime import UTC, datetime

import pytest

from palisade.audit.chain.hashing import encode, event_hash
from palisade.audit.model import SealedEvent

BASE = SealedEvent(
    workspace_id="ws_" + "a" * 32,
    seq=7,
    prev_hash=bytes(range(32)),
    event_id="b" * 32,
    type="session.login_succeeded",
    occurred_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    recorded_at=datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC),
    source="auth",
    actor="user:usr_x",
    subject="user:usr_x",
    ip_ct=b"\x01ip",
    user_agent_ct=b"\x01ua",
    location_ct=None,
    pii_erased=False,
    device_browser="Firefox 120",
    device_os="Linux",
    device_kind="desktop",
    outcome="success",
    reason="",
    details="{}",
)


def _changed(name: str, value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, bytes):
        return value + b"!"
    if isinstance(value, datetime):
        return value.replace(microsecond=(value.microsecond + 1) % 1_000_000)
    if value is None:
        return b""
    return str(value) + "!"


@pytest.mark.parametrize("name", [f.name for f in fields(SealedEvent)])
def test_every_field_is_covered(name: str) -> None:
    changed = replace(BASE, **{name: _changed(name, getattr(BASE, name))})
    assert event_hash(changed) != event_hash(BASE)


def test_boundaries_between_fields_are_unambiguous() -> None:
    one = replace(BASE, actor="user:ab", subject="c")
    two = replace(BASE, actor="user:a", subject="bc")
    assert encode(one) != encode(two)
    assert encode(replace(BASE, location_ct=None)) != encode(replace(BASE, location_ct=b""))


def test_the_encoding_is_versioned_and_stable() -> None:
    assert encode(BASE).startswith(b"palisade-audit-event/v1")
    assert event_hash(BASE) == event_hash(replace(BASE))
    # Microseconds are part of the moment, as stored.
    assert b"2026-01-02T03:04:05.678901Z" in encode(BASE)


def test_field_associated_data_is_the_common_encoding() -> None:
    from palisade.audit.pii import field_aad
    from palisade.common.aad import associated_data, owner_of

    for event_id, field in (("a" * 32, "ip"), ("b" * 32, "user_agent"), ("", "location")):
        assert field_aad(event_id, field) == associated_data("audit", event_id, field)
        assert owner_of(field_aad(event_id, field)) == "audit"
