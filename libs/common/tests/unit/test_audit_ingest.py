"""An outbox row as Ingest takes it, and how audit's refusals are read
(palisade.common.audit_ingest)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from palisade.common.audit_forwarder import forwarder_lock_key
from palisade.common.audit_ingest import (
    OutboxRow,
    UnreadableEvent,
    _index,
    _stable_code,
    ingest_event,
    without_pii,
)
from palisade.common.outbox import SecurityEvent

AT = datetime(2026, 5, 1, 8, 30, 15, 250000, tzinfo=UTC)


def _row(payload: str) -> OutboxRow:
    return OutboxRow(7, "e" * 32, "member.removed", AT, payload)


def test_an_event_keeps_every_field_and_its_details_become_strings() -> None:
    event = SecurityEvent(
        type="member.removed",
        occurred_at=AT,
        actor="user:usr_1",
        subject="usr_2",
        workspace_id="ws_3",
        ip="2001:db8::1",
        device="Safari 17 on iOS",
        outcome="failure",
        reason="last_owner",
        details={"role": "admin", "keys": 3, "notified": False, "gone": None},
    )
    sent = ingest_event(_row(json.dumps(event.payload())))
    assert (sent.event_id, sent.type) == ("e" * 32, "member.removed")
    assert sent.occurred_at.ToDatetime(tzinfo=UTC) == AT
    assert (sent.actor, sent.subject, sent.workspace_id) == ("user:usr_1", "usr_2", "ws_3")
    assert (sent.ip, sent.device, sent.user_agent) == ("2001:db8::1", "Safari 17 on iOS", "")
    assert (sent.outcome, sent.reason) == ("failure", "last_owner")
    assert dict(sent.details) == {"role": "admin", "keys": "3", "notified": "false"}


def test_unset_fields_are_empty_strings() -> None:
    sent = ingest_event(_row(json.dumps(SecurityEvent(type="x", occurred_at=AT).payload())))
    assert (sent.workspace_id, sent.actor, sent.ip, sent.device) == ("", "", "", "")
    assert sent.outcome == "success"


@pytest.mark.parametrize("payload", ["{", "[]", '"text"', '{"details": [1]}'])
def test_a_payload_that_is_no_event_is_unreadable(payload: str) -> None:
    with pytest.raises(UnreadableEvent):
        ingest_event(_row(payload))


def test_without_pii_drops_the_ip_and_device_only() -> None:
    event = SecurityEvent(type="x", occurred_at=AT, ip="192.0.2.1", device="d", subject="usr_1")
    cleaned = json.loads(without_pii(json.dumps(event.payload())))
    assert (cleaned["ip"], cleaned["device"], cleaned["subject"]) == (None, None, "usr_1")


def test_the_refused_item_is_read_from_audit_message_within_the_batch() -> None:
    assert _index("events[3]: unknown event type", 5) == 3
    assert _index("events[0]: bad", 1) == 0
    assert _index("events[5]: out of the batch", 5) is None
    assert _index("the batch is too large", 5) is None
    assert _index("prefix events[2]: not at the start", 5) is None


def test_only_plain_error_codes_are_kept() -> None:
    assert _stable_code("unknown_event_type") == "unknown_event_type"
    for odd in (None, "", "has space", "x" * 65, "ünicode", "a-b"):
        assert _stable_code(odd) == "invalid_argument"


def test_each_service_has_its_own_lock_key() -> None:
    keys = {forwarder_lock_key(name) for name in ("auth", "apikeys", "visitors")}
    assert len(keys) == 3
    assert all(-(2**63) <= key < 2**63 for key in keys)
