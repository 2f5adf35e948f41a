"""An Ingest batch's events, checked one by one: the first bad one refuses the whole batch.

Identifiers must have the forms the services mint; free text (reason, details, device) must
be short, since it is shown to admins, exported to SIEMs and hashed into the chain. Text a
client may have chosen (reason and detail values can carry a passkey's name; a user agent is
the client's own) is cleaned to one printable line rather than refused: refusing would set the
event aside for a stray control character. Sizes are checked after cleaning.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from palisade.audit import errors
from palisade.audit.catalogue import is_known, may_emit
from palisade.audit.model import SYSTEM_CHAIN, NewEvent
from palisade.audit.tables import DEVICE_PART_CHARS, PRINCIPAL_CHARS, REASON_CHARS
from palisade.common.client_text import client_ip
from palisade.common.devices import Device, DeviceParser, clean_user_agent, clip, printable
from palisade_api.audit.v1 import audit_pb2 as pb

EVENT_ID = re.compile(r"[0-9a-f]{32}")
WORKSPACE_ID = re.compile(r"ws_[0-9a-f]{32}")
# An id as services mint them: a short lower-case prefix, "_", then the rest.
_ID = r"[a-z]{2,8}_[A-Za-z0-9_-]{1,64}"
_SERVICE = r"[a-z][a-z0-9_-]{0,39}"
ACTOR = re.compile(rf"(?:user|apikey):{_ID}|service:{_SERVICE}|system|anonymous")
SUBJECT = re.compile(rf"(?:user|apikey|visitor|invitation):{_ID}")
# Bare ids in services' outboxes, by the prefix that says their kind.
_BARE_SUBJECT = re.compile(_ID)
_BARE_KINDS = {"usr": "user", "key": "apikey", "vis": "visitor", "inv": "invitation"}
DETAIL_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")

EARLIEST = datetime(2020, 1, 1, tzinfo=UTC)
MAX_DETAILS = 32
MAX_DETAIL_VALUE = 256
MAX_DETAILS_BYTES = 4096
MAX_DEVICE = 128
IP_CHARS = 64
OUTCOMES = ("success", "failure")
SYSTEM_ACTOR = "system"


def _moment(ts: Timestamp, index: int, latest: datetime) -> datetime:
    # Bounds first, in seconds: ToDatetime fails on moments outside years 1..9999.
    if not EARLIEST.timestamp() <= ts.seconds <= latest.timestamp():
        raise errors.InvalidOccurredAt(index)
    if not 0 <= ts.nanos < 1_000_000_000:
        raise errors.InvalidOccurredAt(index)
    moment = datetime.fromtimestamp(ts.seconds, UTC) + timedelta(microseconds=ts.nanos // 1000)
    if moment > latest:
        raise errors.InvalidOccurredAt(index)
    return moment


def _single_line(text: str, limit: int) -> str | None:
    """text as one printable line (controls, bidi overrides and the like dropped), or None when
    that is longer than limit."""
    line = printable(text)
    return line if len(line) <= limit else None


def _looks_like_user_agent(text: str) -> bool:
    # A User-Agent names products with versions ("Firefox/120.0"); a description made by
    # palisade.common.devices ("Firefox 120 on Linux") never holds a "/". Forwarders that
    # send the outbox's description as user_agent still get the device right.
    return "/" in text


def _subject(raw: str, index: int) -> str:
    if not raw:
        return ""
    if len(raw) <= PRINCIPAL_CHARS and SUBJECT.fullmatch(raw):
        return raw
    kind = _BARE_KINDS.get(raw.partition("_")[0])
    if kind is not None and _BARE_SUBJECT.fullmatch(raw):
        prefixed = f"{kind}:{raw}"
        if len(prefixed) <= PRINCIPAL_CHARS:
            return prefixed
    raise errors.InvalidSubject(index)


def _details(values: Mapping[str, str], index: int) -> str:
    if len(values) > MAX_DETAILS:
        raise errors.InvalidDetails(index)
    cleaned: dict[str, str] = {}
    for key, value in values.items():
        line = _single_line(value, MAX_DETAIL_VALUE)
        if not DETAIL_KEY.fullmatch(key) or line is None:
            raise errors.InvalidDetails(index)
        cleaned[key] = line
    text = json.dumps(cleaned, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    if len(text) > MAX_DETAILS_BYTES:
        raise errors.InvalidDetails(index)
    return text


def _device(event: pb.IngestEvent, user_agent: str, index: int, devices: DeviceParser) -> Device:
    if user_agent and _looks_like_user_agent(user_agent):
        return devices.parse(user_agent)
    description = event.device or user_agent
    if not description:
        return Device(browser="", os="", kind="")  # no client behind the event
    line = _single_line(description, MAX_DEVICE)
    if line is None:
        raise errors.InvalidDevice(index)
    described = Device.from_description(line)
    return Device(
        browser=clip(described.browser, DEVICE_PART_CHARS),
        os=clip(described.os, DEVICE_PART_CHARS),
        kind=described.kind,
    )


def validate(
    event: pb.IngestEvent,
    index: int,
    *,
    source: str,
    latest: datetime,
    devices: DeviceParser | None = None,
) -> NewEvent:
    """The event as the log will keep it; raises the InvalidEvent that says what is wrong.

    source: the calling service (its verified caller assertion), which must be one of the
    type's emitters; latest: the last moment an event may claim to have happened (now plus the
    clock skew); devices: the (caching) User-Agent parser to use."""
    if not EVENT_ID.fullmatch(event.event_id):
        raise errors.InvalidEventId(index)
    if not is_known(event.type):
        raise errors.UnknownEventType(index)
    if not may_emit(source, event.type):
        # A service writes only its own kinds of events: a compromised apikeys must not be able
        # to record (or fake a trail of) sign-ins, which only auth performs.
        raise errors.EventTypeNotAllowed(index, f"type {event.type} is not emitted by {source}")
    if not event.HasField("occurred_at"):
        raise errors.InvalidOccurredAt(index)
    occurred_at = _moment(event.occurred_at, index, latest)
    if event.workspace_id and not WORKSPACE_ID.fullmatch(event.workspace_id):
        raise errors.InvalidWorkspaceId(index)
    actor = event.actor or SYSTEM_ACTOR
    if len(actor) > PRINCIPAL_CHARS or not ACTOR.fullmatch(actor):
        raise errors.InvalidActor(index)
    subject = _subject(event.subject, index)
    ip = ""
    if event.ip:
        ip = client_ip(event.ip, IP_CHARS) or ""
        if not ip:
            raise errors.InvalidIp(index)
    if event.outcome not in OUTCOMES:
        raise errors.InvalidOutcome(index)
    reason = _single_line(event.reason, REASON_CHARS)
    if reason is None:
        raise errors.InvalidReason(index)
    user_agent = clean_user_agent(event.user_agent)
    device = _device(event, user_agent, index, devices or DeviceParser(max_entries=1))
    if not _looks_like_user_agent(user_agent):
        user_agent = ""  # a device description, kept as the device only
    return NewEvent(
        index=index,
        event_id=event.event_id,
        type=event.type,
        occurred_at=occurred_at,
        workspace_id=event.workspace_id or SYSTEM_CHAIN,
        actor=actor,
        subject=subject,
        ip=ip,
        user_agent=user_agent,
        device=device,
        outcome=event.outcome,
        reason=reason,
        details=_details(event.details, index),
    )
