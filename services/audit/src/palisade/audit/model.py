"""What the log holds, as plain values (no SQL or gRPC).

An event arrives as a NewEvent (validated, PII in plaintext), is sealed into its chain as a
SealedEvent (PII fields encrypted, position and predecessor fixed: everything the hash covers)
and read back as a StoredEvent (the sealed content, its hash and its place in storage order).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from palisade.common.devices import Device

SYSTEM_CHAIN = ""  # the chain of events tied to no workspace
GENESIS_HASH = bytes(32)  # the predecessor of every chain's first event
MANAGER_ROLES = frozenset({"owner", "admin"})
PII_FIELDS = ("ip", "user_agent", "location")


class NewEvent(NamedTuple):
    """A validated event of an Ingest batch (batch_index: its position there). A NamedTuple
    rather than a frozen dataclass: one is made per event ingested, and building a frozen
    dataclass of this size costs about a microsecond more."""

    batch_index: int
    event_id: str
    type: str
    occurred_at: datetime  # UTC, whole microseconds
    workspace_id: str  # SYSTEM_CHAIN for none
    actor: str
    subject: str  # "" for none
    ip: str  # canonical, "" for none
    user_agent: str  # cleaned, "" for none
    device: Device
    outcome: str
    reason: str
    details: str  # canonical JSON object text


@dataclass(frozen=True)
class SealedEvent:
    """Every stored field the event's hash covers, in the encoding's order."""

    workspace_id: str
    seq: int
    prev_hash: bytes
    event_id: str
    type: str
    occurred_at: datetime
    recorded_at: datetime
    source: str
    actor: str
    subject: str
    ip_ct: bytes | None
    user_agent_ct: bytes | None
    location_ct: bytes | None
    pii_erased: bool  # the subject was already erased when the event arrived: no PII kept
    device_browser: str
    device_os: str
    device_kind: str
    outcome: str
    reason: str
    details: str


@dataclass(frozen=True)
class StoredEvent:
    position: int  # storage order (the events table's id)
    sealed: SealedEvent
    hash: bytes


@dataclass(frozen=True)
class ChainHead:
    workspace_id: str
    size: int
    head: bytes
    # After a retention purge: what the first remaining event links to, which a signed
    # retention anchor (AnchorRecord) of that size and head must vouch for; 0 and zeros: none.
    anchor_size: int
    anchor_head: bytes
    anchor_checkpoint_id: int | None


@dataclass(frozen=True)
class CheckpointRecord:
    id: int
    workspace_id: str
    size: int
    head: bytes
    signed_at: datetime
    key_id: str
    signature: bytes
    kind: str  # "periodic", "on_demand" or "retention"
    # Where verify got it: "" for the database; else e.g. "witness file" or "from <path>".
    origin: str = ""

    def same_statement(self, other: CheckpointRecord) -> bool:
        """Whether both are the one signed statement (wherever each copy was kept)."""
        return (
            self.workspace_id,
            self.size,
            self.head,
            self.signed_at,
            self.key_id,
            self.signature,
        ) == (
            other.workspace_id,
            other.size,
            other.head,
            other.signed_at,
            other.key_id,
            other.signature,
        )


@dataclass(frozen=True)
class AnchorRecord:
    """A retention anchor: "the purge deleted this chain's first <size> events, which ended in
    <head>", signed by the purge job (palisade.audit.checkpoints.notes.anchor_note)."""

    id: int
    workspace_id: str
    size: int
    head: bytes
    purged_at: datetime
    key_id: str
    signature: bytes
