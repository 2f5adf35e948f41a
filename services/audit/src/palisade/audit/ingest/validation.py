"""An Ingest batch's events, checked one by one: the first bad one refuses the whole batch.

Identifiers must have the forms the services mint; free text (reason, details, device) must
be short, since it is shown to admins, exported to SIEMs and hashed into the chain. Text a
client may have chosen (reason and detail values can carry a passkey's name; a user agent is
the client's own) is cleaned to one printable line rather than refused: refusing would set the
event aside for a stray control character. Sizes are checked after cleaning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from json import encoder as json_encoder

from google.protobuf.timestamp_pb2 import Timestamp

from palisade.audit import errors
from palisade.audit.catalogue import emitted_by, is_known
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
# JSON string text of a str, escaped as json.dumps(..., ensure_ascii=True) escapes it.
_json_string = json_encoder.encode_basestring_ascii


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EARLIEST_SECONDS = int(EARLIEST.timestamp())
_MICROSECOND = timedelta(microseconds=1)


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


def _details(values: Mapping[str, str], index: int, keys: set[str]) -> str:
    """The details as canonical JSON: what json.dumps(cleaned, sort_keys=True,
    separators=(",", ":"), ensure_ascii=True) gives, built directly (keys are plain
    [a-z0-9_], so only values need escaping). keys: the keys found valid already."""
    if not values:
        return "{}"
    if len(values) > MAX_DETAILS:
        raise errors.InvalidDetails(index)
    members = []
    for key in sorted(values):  # (a proto map's items() is the slow, pure-Python mixin)
        line = _single_line(values[key], MAX_DETAIL_VALUE)
        if line is None:
            raise errors.InvalidDetails(index)
        if key not in keys:
            if not DETAIL_KEY.fullmatch(key):
                raise errors.InvalidDetails(index)
            keys.add(key)
        members.append(f'"{key}":{_json_string(line)}')
    text = "{" + ",".join(members) + "}"
    if len(text) > MAX_DETAILS_BYTES:
        raise errors.InvalidDetails(index)
    return text


def _client(
    user_agent: str, description: str, index: int, devices: DeviceParser
) -> tuple[str, Device]:
    """(the user agent kept, the device) of an event's user_agent and device fields."""
    user_agent = clean_user_agent(user_agent)
    if user_agent and _looks_like_user_agent(user_agent):
        return user_agent, devices.parse(user_agent)
    # A device description (in device, or in user_agent), kept as the device only.
    description = description or user_agent
    if not description:
        return "", Device(browser="", os="", kind="")  # no client behind the event
    line = _single_line(description, MAX_DEVICE)
    if line is None:
        raise errors.InvalidDevice(index)
    described = Device.from_description(line)
    return "", Device(
        browser=clip(described.browser, DEVICE_PART_CHARS),
        os=clip(described.os, DEVICE_PART_CHARS),
        kind=described.kind,
    )


class _Batch:
    """The checks of one batch's events (one source, one moment). A batch repeats its
    workspaces, actors, subjects, IPs, clients and detail keys: a value found valid once in it
    is not checked again."""

    def __init__(self, *, source: str, latest: datetime, devices: DeviceParser) -> None:
        self._source = source
        self._types = emitted_by(source)
        self._latest_seconds = int(latest.timestamp())
        self._latest_micros = (latest - _EPOCH) // _MICROSECOND
        self._devices = devices
        self._workspaces: set[str] = set()
        self._actors: set[str] = set()
        self._subjects: dict[str, str] = {}
        self._ips: dict[str, str] = {}
        self._clients: dict[tuple[str, str], tuple[str, Device]] = {}
        self._detail_keys: set[str] = set()
        self._moments: dict[int, datetime] = {}

    def event(self, event: pb.IngestEvent, index: int) -> NewEvent:
        event_id = event.event_id
        if not EVENT_ID.fullmatch(event_id):
            raise errors.InvalidEventId(index)
        event_type = event.type
        if event_type not in self._types:
            if not is_known(event_type):
                raise errors.UnknownEventType(index)
            # A service writes only its own kinds of events: a compromised apikeys must not be
            # able to record (or fake a trail of) sign-ins, which only auth performs.
            raise errors.EventTypeNotAllowed(
                index, f"type {event_type} is not emitted by {self._source}"
            )
        if not event.HasField("occurred_at"):
            raise errors.InvalidOccurredAt(index)
        occurred_at = self._moment(event.occurred_at, index)
        workspace_id = event.workspace_id
        if workspace_id and workspace_id not in self._workspaces:
            if not WORKSPACE_ID.fullmatch(workspace_id):
                raise errors.InvalidWorkspaceId(index)
            self._workspaces.add(workspace_id)
        actor = event.actor or SYSTEM_ACTOR
        if actor not in self._actors:
            if len(actor) > PRINCIPAL_CHARS or not ACTOR.fullmatch(actor):
                raise errors.InvalidActor(index)
            self._actors.add(actor)
        raw_subject = event.subject
        subject = self._subjects.get(raw_subject)
        if subject is None:
            subject = self._subjects[raw_subject] = _subject(raw_subject, index)
        ip = event.ip
        if ip:
            canonical = self._ips.get(ip)
            if canonical is None:
                canonical = client_ip(ip, IP_CHARS)
                if not canonical:
                    raise errors.InvalidIp(index)
                self._ips[ip] = canonical
            ip = canonical
        outcome = event.outcome
        if outcome not in OUTCOMES:
            raise errors.InvalidOutcome(index)
        reason = event.reason
        if reason:
            line = _single_line(reason, REASON_CHARS)
            if line is None:
                raise errors.InvalidReason(index)
            reason = line
        sent = (event.user_agent, event.device)
        client = self._clients.get(sent)
        if client is None:
            client = self._clients[sent] = _client(*sent, index, self._devices)
        return NewEvent(
            index,
            event_id,
            event_type,
            occurred_at,
            workspace_id or SYSTEM_CHAIN,
            actor,
            subject,
            ip,
            client[0],
            client[1],
            outcome,
            reason,
            _details(event.details, index, self._detail_keys),
        )

    def _moment(self, ts: Timestamp, index: int) -> datetime:
        # Bounds first, in whole numbers: datetime fails on moments outside years 1..9999.
        seconds, nanos = ts.seconds, ts.nanos
        if not _EARLIEST_SECONDS <= seconds <= self._latest_seconds:
            raise errors.InvalidOccurredAt(index)
        if not 0 <= nanos < 1_000_000_000:
            raise errors.InvalidOccurredAt(index)
        micros = seconds * 1_000_000 + nanos // 1000
        if micros > self._latest_micros:
            raise errors.InvalidOccurredAt(index)
        moment = self._moments.get(micros)
        if moment is None:
            moment = self._moments[micros] = _EPOCH + timedelta(microseconds=micros)
        return moment


def validate_batch(
    events: Sequence[pb.IngestEvent],
    *,
    source: str,
    latest: datetime,
    devices: DeviceParser | None = None,
) -> list[NewEvent]:
    """The events as the log will keep them, in order; raises the InvalidEvent that says what
    is wrong with the first bad one.

    source: the calling service (its verified caller assertion), which must be one of each
    type's emitters; latest: the last moment an event may claim to have happened (now plus the
    clock skew); devices: the (caching) User-Agent parser to use."""
    batch = _Batch(source=source, latest=latest, devices=devices or DeviceParser(max_entries=1))
    return [batch.event(event, index) for index, event in enumerate(events)]


def validate(
    event: pb.IngestEvent,
    index: int,
    *,
    source: str,
    latest: datetime,
    devices: DeviceParser | None = None,
) -> NewEvent:
    """One event as validate_batch sees it at position index."""
    batch = _Batch(source=source, latest=latest, devices=devices or DeviceParser(max_entries=1))
    return batch.event(event, index)
