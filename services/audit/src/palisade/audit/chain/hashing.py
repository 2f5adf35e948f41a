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


def timestamp_text(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds: what the hash covers for a moment."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _part(value: str | bytes | None) -> bytes:
    if value is None:
        return _ABSENT
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack(">I", len(raw)) + raw


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
    return ENCODING_VERSION + b"".join(_part(p) for p in parts)


def event_hash(event: SealedEvent) -> bytes:
    return hashlib.sha256(encode(event)).digest()
