"""The canonical, versioned encoding of a sealed event, and its SHA-256.

Every field is length-prefixed (4 bytes, big-endian; 0xFFFFFFFF for an absent value), so no
two different events can encode to the same bytes whatever their fields hold. The PII fields
enter as their ciphertexts: erasing a subject later (crypto-shredding its key) leaves every
stored byte, and so every hash, as it was.
"""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime

from palisade.audit.model import SealedEvent

ENCODING_VERSION = b"palisade-audit-event/v1"
_ABSENT = struct.pack(">I", 0xFFFFFFFF)
_LENGTH = struct.Struct(">I").pack


def timestamp_text(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds ("2026-01-02T03:04:05.678901Z"): what the hash covers
    for a moment."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def encode(event: SealedEvent) -> bytes:
    parts = (
        event.workspace_id,
        str(event.seq),
        event.prev_hash,
        event.event_id,
        event.type,
        timestamp_text(event.occurred_at),
        timestamp_text(event.recorded_at),
        event.source,
        event.actor,
        event.subject,
        event.ip_ct,
        event.user_agent_ct,
        event.location_ct,
        "1" if event.pii_erased else "0",
        event.device_browser,
        event.device_os,
        event.device_kind,
        event.outcome,
        event.reason,
        event.details,
    )
    out = [ENCODING_VERSION]
    append = out.append
    for part in parts:  # a plain loop: this runs for every event ingested and verified
        if part is None:
            append(_ABSENT)
            continue
        raw = part.encode("utf-8") if isinstance(part, str) else part
        append(_LENGTH(len(raw)))
        append(raw)
    return b"".join(out)


def event_hash(event: SealedEvent) -> bytes:
    return hashlib.sha256(encode(event)).digest()
