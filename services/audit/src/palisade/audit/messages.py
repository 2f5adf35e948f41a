"""Proto messages of the log's values: events and checkpoints as the API serves them."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.audit.checkpoints.notes import note
from palisade.audit.model import CheckpointRecord, StoredEvent
from palisade.audit.pii import RevealedPii
from palisade_api.audit.v1 import audit_pb2 as pb

_ACTOR_TYPES = {"user": "user", "apikey": "api_key", "service": "system"}


def timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def actor_message(actor: str) -> pb.Actor:
    kind, _, identifier = actor.partition(":")
    if not identifier:
        return pb.Actor(type="anonymous" if actor == "anonymous" else "system")
    return pb.Actor(type=_ACTOR_TYPES.get(kind, "system"), id=identifier)


def event_message(stored: StoredEvent, pii: RevealedPii) -> pb.Event:
    sealed = stored.sealed
    message = pb.Event(
        id=sealed.event_id,
        type=sealed.type,
        occurred_at=timestamp(sealed.occurred_at),
        actor=actor_message(sealed.actor),
        subject=sealed.subject,
        ip=pii.ip,
        user_agent=pii.user_agent,
        outcome=sealed.outcome,
        reason=sealed.reason,
        details=json.loads(sealed.details),
        workspace_id=sealed.workspace_id,
        erased=pii.erased,
        source=sealed.source,
    )
    if sealed.device_browser or sealed.device_os or sealed.device_kind:
        message.device.CopyFrom(
            pb.Device(browser=sealed.device_browser, os=sealed.device_os, kind=sealed.device_kind)
        )
    if pii.location.known:
        message.location.CopyFrom(pb.Location(country=pii.location.country, city=pii.location.city))
    return message


def checkpoint_message(record: CheckpointRecord) -> pb.Checkpoint:
    return pb.Checkpoint(
        workspace_id=record.workspace_id,
        size=record.size,
        head=record.head.hex(),
        signed_at=timestamp(record.signed_at),
        key_id=record.key_id,
        note=note(record.workspace_id, record.size, record.head, record.signed_at),
        signature=base64.b64encode(record.signature).decode(),
    )


class CheckpointTextInvalid(ValueError):
    """Text that is not a checkpoint as GET /v1/audit/checkpoint serves it."""


def checkpoint_json(record: CheckpointRecord) -> str:
    """The checkpoint as GET /v1/audit/checkpoint serves it, on one line."""
    return json_format.MessageToJson(checkpoint_message(record), indent=None, sort_keys=True)


def checkpoint_from_json(text: str, *, origin: str) -> CheckpointRecord:
    """A checkpoint as GET /v1/audit/checkpoint serves it (or checkpoint_json wrote it), with
    its fields checked against its note: the note is what the signature covers, so fields that
    say something else would be checked for a statement nobody signed."""
    try:
        message = json_format.Parse(text, pb.Checkpoint(), ignore_unknown_fields=True)
        head = bytes.fromhex(message.head)
        signature = base64.b64decode(message.signature, validate=True)
        signed_at = message.signed_at.ToDatetime(tzinfo=UTC)
    except (json_format.ParseError, ValueError, binascii.Error, OverflowError):
        raise CheckpointTextInvalid("not a checkpoint of GET /v1/audit/checkpoint's form") from None
    if len(head) != 32 or not message.HasField("signed_at") or not message.key_id:
        raise CheckpointTextInvalid("a checkpoint needs a 32-byte head, signedAt and keyId")
    record = CheckpointRecord(
        0,
        message.workspace_id,
        message.size,
        head,
        signed_at,
        message.key_id,
        signature,
        "",
        origin=origin,
    )
    if message.note and message.note != note(record.workspace_id, record.size, head, signed_at):
        raise CheckpointTextInvalid("the checkpoint's note does not match its fields")
    return record
