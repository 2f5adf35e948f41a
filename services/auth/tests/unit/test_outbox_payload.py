"""SecurityEvent.payload() (SECURITY.md 37, 38): who, whom, where, how; short; JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import MappingProxyType

import pytest

from palisade.common.outbox import SecurityEvent

WHEN = datetime(2026, 1, 1, tzinfo=UTC)
FIELDS = {"actor", "subject", "workspace_id", "ip", "device", "outcome", "reason", "details"}


def _full_event(**overrides) -> SecurityEvent:
    fields = {
        "type": "session.login_failed",
        "occurred_at": WHEN,
        "actor": "anonymous",
        "subject": "usr_1",
        "workspace_id": "ws_1",
        "ip": "203.0.113.7",
        "device": "Firefox 120 on Linux",
        "outcome": "failure",
        "reason": "bad_password",
        "details": {"session_id": "ses_1", "attempt": 3, "rehashed": False, "note": None},
    }
    fields.update(overrides)
    return SecurityEvent(**fields)


def test_payload_carries_every_field() -> None:
    assert _full_event().payload() == {
        "actor": "anonymous",
        "subject": "usr_1",
        "workspace_id": "ws_1",
        "ip": "203.0.113.7",
        "device": "Firefox 120 on Linux",
        "outcome": "failure",
        "reason": "bad_password",
        "details": {"session_id": "ses_1", "attempt": 3, "rehashed": False, "note": None},
    }


def test_defaults() -> None:
    event = SecurityEvent(type="user.signed_up", occurred_at=WHEN)
    assert event.payload() == {
        "actor": None,
        "subject": None,
        "workspace_id": None,
        "ip": None,
        "device": None,
        "outcome": "success",
        "reason": None,
        "details": {},
    }


def test_event_ids_are_unique_hex() -> None:
    ids = {SecurityEvent(type="t", occurred_at=WHEN).event_id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.parametrize("field", ["actor", "subject", "workspace_id", "ip", "device", "reason"])
def test_long_top_level_strings_are_clipped_to_256(field) -> None:
    payload = _full_event(**{field: "x" * 10_000}).payload()
    assert payload[field] == "x" * 256
    assert set(payload) == FIELDS


def test_outcome_is_clipped_too() -> None:
    assert _full_event(outcome="o" * 300).payload()["outcome"] == "o" * 256


def test_long_detail_strings_are_clipped_to_256() -> None:
    payload = _full_event(details={"a": "y" * 300, "b": "z" * 256, "c": "w" * 255}).payload()
    assert payload["details"] == {"a": "y" * 256, "b": "z" * 256, "c": "w" * 255}


def test_clipping_counts_code_points() -> None:
    payload = _full_event(device="\U0001f511" * 300, details={"d": "\u00e9" * 300}).payload()
    assert payload["device"] == "\U0001f511" * 256
    assert payload["details"]["d"] == "\u00e9" * 256


def test_non_string_details_are_untouched() -> None:
    details = {"n": 10**30, "t": True, "f": False, "none": None, "zero": 0}
    assert _full_event(details=details).payload()["details"] == details


def test_short_values_are_untouched_and_the_event_is_not_mutated() -> None:
    details = {"k": "v" * 300}
    event = _full_event(details=details)
    event.payload()
    assert details == {"k": "v" * 300}
    assert event.details["k"] == "v" * 300


def test_any_mapping_is_accepted_as_details() -> None:
    payload = _full_event(details=MappingProxyType({"k": "v"})).payload()
    assert payload["details"] == {"k": "v"}
    json.dumps(payload)


def test_payload_is_json_serializable_and_one_line() -> None:
    event = _full_event(
        device="evil\r\nInjected: yes\u2028\x00",
        reason="\u202e" + "r" * 500,
        details={"ua": "line1\nline2", "emoji": "\U0001f511", "n": 1},
    )
    text = json.dumps(event.payload(), sort_keys=True, ensure_ascii=True)
    assert "\n" not in text
    assert "\r" not in text
    assert text.isascii()
    assert json.loads(text) == event.payload()


def test_payload_has_no_type_time_or_id_duplicated() -> None:
    # Those are columns of the outbox row, not part of the payload.
    assert set(_full_event().payload()) == FIELDS
