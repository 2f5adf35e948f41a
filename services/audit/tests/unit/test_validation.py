"""Validation details the integration tests do not spell out."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from palisade.audit import errors
from palisade.audit.ingest.validation import validate, validate_batch
from palisade.common.devices import printable
from palisade_api.audit.v1 import audit_pb2 as pb

NOW = datetime(2026, 6, 1, tzinfo=UTC)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


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


def test_details_are_the_canonical_json_of_what_was_kept() -> None:
    # Built by hand for speed: it must be exactly what json.dumps gives.
    rng = random.Random(7)
    alphabet = 'ab "\\/\t\n\x00\x7f\u00e9\u2028\u202e\ud7ff\U0001f600'
    for _ in range(300):
        sent = {
            rng.choice(["a", "b_1", "method", "z9"]): "".join(
                rng.choice(alphabet) for _ in range(rng.randrange(0, 20))
            )
            for _ in range(rng.randrange(0, 6))
        }
        kept = validate(_event(details=sent), 0, source="auth", latest=NOW).details
        cleaned = {k: printable(v) for k, v in sent.items()}
        expected = json.dumps(cleaned, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        assert kept == expected


def test_a_batch_is_validated_as_each_event_alone() -> None:
    # validate_batch remembers values it found valid; the answers must not change.
    events = [
        _event(actor="user:usr_a", subject="usr_b", ip="198.51.100.7", user_agent=FIREFOX),
        _event(actor="user:usr_a", subject="usr_b", ip="198.51.100.7", user_agent=FIREFOX),
        _event(actor="system", device="Firefox 120 on Linux", details={"k": "v"}),
        _event(workspace_id="ws_" + "a" * 32, reason="why\n", details={"k": "w"}),
    ]
    alone = [validate(e, i, source="auth", latest=NOW) for i, e in enumerate(events)]
    assert validate_batch(events, source="auth", latest=NOW) == alone


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"actor": "user:"}, errors.InvalidActor),
        ({"subject": "zzz_abc"}, errors.InvalidSubject),
        ({"ip": "300.1.1.1"}, errors.InvalidIp),
        ({"workspace_id": "ws_x"}, errors.InvalidWorkspaceId),
        ({"details": {"Bad": "x"}}, errors.InvalidDetails),
        ({"type": "no.such_type"}, errors.UnknownEventType),
    ],
)
def test_a_batch_names_its_first_bad_event(bad: dict[str, object], error: type) -> None:
    good = {"actor": "user:usr_a", "subject": "usr_b", "ip": "198.51.100.7"}
    events = [_event(**good), _event(**good), _event(**{**good, **bad}), _event(**good)]
    with pytest.raises(error) as refused:
        validate_batch(events, source="auth", latest=NOW)
    assert refused.value.index == 2


def test_occurred_at_bounds_are_exact() -> None:
    at_latest = _event()
    at_latest.occurred_at.FromDatetime(NOW)
    assert validate(at_latest, 0, source="auth", latest=NOW).occurred_at == NOW
    after = _event()
    after.occurred_at.FromDatetime(NOW + timedelta(microseconds=1))
    with pytest.raises(errors.InvalidOccurredAt):
        validate(after, 0, source="auth", latest=NOW)
    below = _event()
    below.occurred_at.FromDatetime(datetime(2019, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    with pytest.raises(errors.InvalidOccurredAt):
        validate(below, 0, source="auth", latest=NOW)
    far = _event()
    far.occurred_at.seconds = 10**12
    with pytest.raises(errors.InvalidOccurredAt):
        validate(far, 0, source="auth", latest=NOW)
