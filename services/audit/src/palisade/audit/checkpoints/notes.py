"""The signed notes: the exact texts a checkpoint's and a retention anchor's signatures cover.

A checkpoint (the public contract of GET /v1/audit/checkpoint, HTTP-API.md):

    palisade-audit-checkpoint/v1
    <workspace id, empty for the system chain>
    <size>
    <head: hex SHA-256 of the chain's last event, 64 zeros for an empty chain>
    <signed at: RFC 3339, whole seconds, UTC, e.g. 2026-01-01T12:00:00Z>

A retention anchor, signed only by the purge job when it deletes a chain's first <size> events:

    palisade-audit-anchor/v1
    <workspace id>
    <size>
    <head: hex SHA-256 of event <size>, the last one deleted>
    <purged at: RFC 3339, whole seconds, UTC>

each line ending in "\\n". Anyone holding the public key can check either offline: build the
note from its fields, verify the Ed25519 signature over the note's UTF-8 bytes. The first line
keeps the two apart: a checkpoint's signature never verifies as an anchor's, so an ordinary
checkpoint cannot be passed off as the point where a purge cut the chain.
"""

from __future__ import annotations

from datetime import UTC, datetime

NOTE_VERSION = "palisade-audit-checkpoint/v1"
ANCHOR_VERSION = "palisade-audit-anchor/v1"


def signed_at_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lines(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


def note(workspace_id: str, size: int, head: bytes, signed_at: datetime) -> str:
    return _lines(NOTE_VERSION, workspace_id, str(size), head.hex(), signed_at_text(signed_at))


def anchor_note(workspace_id: str, size: int, head: bytes, purged_at: datetime) -> str:
    return _lines(ANCHOR_VERSION, workspace_id, str(size), head.hex(), signed_at_text(purged_at))
