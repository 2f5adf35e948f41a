"""The audit database: its tables (the migrations create exactly these columns).

events holds each workspace's hash chain (seq 1, 2, ... per workspace_id; "" is the system
chain); no column holds a plaintext IP, user agent or location, only their ciphertexts from
the crypto service. chains holds each chain's head, the row Ingest locks to append (Postgres),
and the retention anchor. checkpoints holds every signed checkpoint, anchors every signed
retention anchor (a purge's boundary).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    FetchedValue,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from palisade.common.db import UTCDateTime

MIGRATIONS_PACKAGE = "palisade.audit.migrations"
metadata = MetaData()
TS = UTCDateTime()

# Column widths (validation uses the same numbers).
ID_CHARS = 40
EVENT_ID_CHARS = 32
TYPE_CHARS = 64
PRINCIPAL_CHARS = 80
SOURCE_CHARS = 40
DEVICE_PART_CHARS = 64
REASON_CHARS = 256
KEY_ID_CHARS = 32


def _serial() -> BigInteger:
    return BigInteger().with_variant(Integer, "sqlite")


events = Table(
    "events",
    metadata,
    Column("id", _serial(), primary_key=True, autoincrement=True),
    # Postgres: the inserting transaction's id (pg_current_xact_id), so a stream reader can
    # tell which positions are final (palisade.audit.queries.stream); SQLite: 0 (one writer).
    Column("tx_order", BigInteger, nullable=False, server_default=FetchedValue()),
    Column("event_id", String(EVENT_ID_CHARS), nullable=False, unique=True),
    Column("workspace_id", String(ID_CHARS), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("type", String(TYPE_CHARS), nullable=False),
    Column("occurred_at", TS, nullable=False),
    Column("recorded_at", TS, nullable=False),
    Column("source", String(SOURCE_CHARS), nullable=False),
    Column("actor", String(PRINCIPAL_CHARS), nullable=False),
    Column("subject", String(PRINCIPAL_CHARS), nullable=False),
    Column("ip_ct", LargeBinary, nullable=True),
    Column("user_agent_ct", LargeBinary, nullable=True),
    Column("location_ct", LargeBinary, nullable=True),
    Column("pii_erased", Boolean, nullable=False),
    Column("device_browser", String(DEVICE_PART_CHARS), nullable=False),
    Column("device_os", String(DEVICE_PART_CHARS), nullable=False),
    Column("device_kind", String(16), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", String(REASON_CHARS), nullable=False),
    Column("details", Text, nullable=False),  # canonical JSON object
    UniqueConstraint("workspace_id", "seq", name="uq_events_chain_seq"),
)
# The workspace's log, newest first, and its filters.
Index("ix_events_workspace_time", events.c.workspace_id, events.c.occurred_at, events.c.id)
Index("ix_events_actor_time", events.c.actor, events.c.occurred_at, events.c.id)
Index("ix_events_subject_time", events.c.subject, events.c.occurred_at, events.c.id)
# The stream, in storage order.
Index("ix_events_stream", events.c.tx_order, events.c.id)

chains = Table(
    "chains",
    metadata,
    Column("workspace_id", String(ID_CHARS), primary_key=True),
    Column("size", BigInteger, nullable=False),  # the last seq (events ever appended)
    Column("head", LargeBinary(32), nullable=False),  # the hash of event `size`
    Column("anchor_size", BigInteger, nullable=False),  # events purged (0: none)
    Column("anchor_head", LargeBinary(32), nullable=False),
    Column("anchor_checkpoint_id", BigInteger, nullable=True),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("id", _serial(), primary_key=True, autoincrement=True),
    Column("workspace_id", String(ID_CHARS), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("head", LargeBinary(32), nullable=False),
    Column("signed_at", TS, nullable=False),
    Column("key_id", String(KEY_ID_CHARS), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
    Column("kind", String(16), nullable=False),
)
Index("ix_checkpoints_workspace_size", checkpoints.c.workspace_id, checkpoints.c.size)

anchors = Table(
    "anchors",
    metadata,
    Column("id", _serial(), primary_key=True, autoincrement=True),
    Column("workspace_id", String(ID_CHARS), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("head", LargeBinary(32), nullable=False),
    Column("purged_at", TS, nullable=False),
    Column("key_id", String(KEY_ID_CHARS), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)
Index("ix_anchors_workspace_size", anchors.c.workspace_id, anchors.c.size)
