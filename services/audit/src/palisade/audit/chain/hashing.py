"""The canonical, versioned encoding of a sealed event, and its SHA-256.

Every field is length-prefixed (4 bytes, big-endian; 0xFFFFFFFF for an absent value), so no
two different events can encode to the same bytes whatever their fields hold. The PII fields
enter as their ciphertexts: erasing a subject later (crypto-shredding its key) leaves every
stored byte, and so every hash, as it was.

encode() is the definition. Ingest builds the same bytes from parts (linked_encoding): the
fields that do not depend on the event's place in its chain are encoded before the chain is
locked, and only the position (seq, predecessor) and the moment of recording are added under
the lock.
"""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime

from palisade.audit.model import SealedEvent

ENCODING_VERSION = b"palisade-audit-event/v1"
ABSENT = struct.pack(">I", 0xFFFFFFFF)
_LENGTH = struct.Struct(">I").pack
_FLAGS = {False: b"\x00\x00\x00\x010", True: b"\x00\x00\x00\x011"}
_sha256 = hashlib.sha256


def field(value: str | bytes | None) -> bytes:
    """One field as the encoding holds it: its length (4 bytes, big-endian) and its UTF-8 or
    raw bytes; ABSENT for None. (Postgres's binary COPY encodes a text or bytea value the same
    way, which the store's append relies on.)"""
    if value is None:
        return ABSENT
    raw = value.encode() if isinstance(value, str) else value
    return _LENGTH(len(raw)) + raw


def bytes_field(value: bytes | None) -> bytes:
    """field() of a bytes value (or None), for callers that know which they hold."""
    return ABSENT if value is None else _LENGTH(len(value)) + value


def text_field(value: str) -> bytes:
    """field() of a str."""
    raw = value.encode()
    return _LENGTH(len(raw)) + raw


def timestamp_text(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds ("2026-01-02T03:04:05.678901Z"): what the hash covers
    for a moment."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    # isoformat of an aware moment ends in "+00:00"; the hash has always said "Z".
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def linked_encoding(
    workspace: bytes,
    seq: int,
    prev_hash: bytes,
    identity: bytes,
    occurred: bytes,
    recorded: bytes,
    parties: bytes,
    erased: bool,
    rest: bytes,
) -> bytes:
    """encode() of an event from its encoded parts, in the encoding's order: workspace
    (field(workspace_id)), identity (event_id and type), occurred and recorded (their
    timestamp_text), parties (source, actor, subject and the three PII ciphertexts), rest (the
    device's three parts, outcome, reason and details), each a concatenation of field()s."""
    seq_text = str(seq).encode()
    return b"".join(
        (
            ENCODING_VERSION,
            workspace,
            _LENGTH(len(seq_text)),
            seq_text,
            _LENGTH(len(prev_hash)),
            prev_hash,
            identity,
            occurred,
            recorded,
            parties,
            _FLAGS[erased],
            rest,
        )
    )


def encode(event: SealedEvent) -> bytes:
    return linked_encoding(
        field(event.workspace_id),
        event.seq,
        event.prev_hash,
        field(event.event_id) + field(event.type),
        field(timestamp_text(event.occurred_at)),
        field(timestamp_text(event.recorded_at)),
        b"".join(
            map(
                field,
                (
                    event.source,
                    event.actor,
                    event.subject,
                    event.ip_ct,
                    event.user_agent_ct,
                    event.location_ct,
                ),
            )
        ),
        bool(event.pii_erased),
        b"".join(
            map(
                field,
                (
                    event.device_browser,
                    event.device_os,
                    event.device_kind,
                    event.outcome,
                    event.reason,
                    event.details,
                ),
            )
        ),
    )


def event_hash(event: SealedEvent) -> bytes:
    return _sha256(encode(event)).digest()


def linked_hash(
    workspace: bytes,
    seq: int,
    prev_hash: bytes,
    identity: bytes,
    occurred: bytes,
    recorded: bytes,
    parties: bytes,
    erased: bool,
    rest: bytes,
) -> bytes:
    """event_hash() from the parts linked_encoding() takes."""
    return _sha256(
        linked_encoding(
            workspace, seq, prev_hash, identity, occurred, recorded, parties, erased, rest
        )
    ).digest()
