"""The checkpoint note: the exact text a checkpoint's signature covers.

    palisade-audit-checkpoint/v1
    <workspace id, empty for the system chain>
    <size>
    <head: hex SHA-256 of the chain's last event, 64 zeros for an empty chain>
    <signed at: RFC 3339, whole seconds, UTC, e.g. 2026-01-01T12:00:00Z>

each line ending in "\\n". Anyone holding the public key can check a checkpoint offline: build
the note from its fields, verify the Ed25519 signature over the note's UTF-8 bytes.
"""

from __future__ import annotations

from datetime import UTC, datetime

NOTE_VERSION = "palisade-audit-checkpoint/v1"


def signed_at_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def note(workspace_id: str, size: int, head: bytes, signed_at: datetime) -> str:
    lines = (NOTE_VERSION, workspace_id, str(size), head.hex(), signed_at_text(signed_at))
    return "".join(line + "\n" for line in lines)
