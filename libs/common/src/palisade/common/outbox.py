"""The transactional outbox: a security event commits in the same transaction as its cause.

Each service has an `outbox_events` table (columns from outbox_columns() and
outbox_forwarding_columns(), so every service's migrations and table agree). emit() adds one
INSERT to the caller's transaction and makes no network hop; palisade.common.audit_forwarder
ships rows to the audit service in batches and marks them, so an audit outage delays events
but never drops them. Payloads never hold secrets: ids, outcomes, reasons, and the client's IP
and device, which the forwarder removes once audit has the event.

The column functions are used by migrations that have already run: never change what one
returns; add a new function for new columns (and a migration in each service that uses it).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    insert,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from palisade.common.db import UTCDateTime

OUTBOX_TABLE = "outbox_events"
OUTBOX_PENDING_INDEX = "ix_outbox_events_pending"
# Values kept short and single-line: they are copied into logs and the audit trail.
_MAX_DETAIL_LENGTH = 256


def outbox_columns() -> list[Column[Any]]:
    return [
        Column(
            "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("event_type", String(64), nullable=False),
        Column("occurred_at", UTCDateTime(), nullable=False),
        Column("payload", Text, nullable=False),
        Column("forwarded_at", UTCDateTime(), nullable=True, index=True),
    ]


def outbox_forwarding_columns() -> list[Column[Any]]:
    """What the audit forwarder adds: an event audit refused for good is set aside (never
    dropped) with audit's stable error code, so the events after it can go on."""
    return [
        Column("rejected_at", UTCDateTime(), nullable=True),
        Column("rejected_code", String(64), nullable=True),
    ]


def outbox_pending(table: Table) -> ColumnElement[bool]:
    """Events still to ship: neither forwarded nor set aside."""
    return and_(table.c.forwarded_at.is_(None), table.c.rejected_at.is_(None))


def outbox_pending_index(table: Table) -> Index:
    """The forwarder's read: pending events in id order, whatever the forwarded history."""
    pending = outbox_pending(table)
    return Index(OUTBOX_PENDING_INDEX, table.c.id, postgresql_where=pending, sqlite_where=pending)


def add_outbox_forwarding(op: Any) -> None:
    """The migration step every service with an outbox takes for the forwarder (op: alembic's
    `op`, a module that stands for the migration's Operations)."""
    with op.batch_alter_table(OUTBOX_TABLE) as batch:
        for column in outbox_forwarding_columns():
            batch.add_column(column)
    pending = text("forwarded_at IS NULL AND rejected_at IS NULL")  # as outbox_pending()
    op.create_index(
        OUTBOX_PENDING_INDEX, OUTBOX_TABLE, ["id"], postgresql_where=pending, sqlite_where=pending
    )


def drop_outbox_forwarding(op: Any) -> None:
    op.drop_index(OUTBOX_PENDING_INDEX, table_name=OUTBOX_TABLE)
    with op.batch_alter_table(OUTBOX_TABLE) as batch:
        for column in reversed(outbox_forwarding_columns()):
            batch.drop_column(column.name)


def outbox_table(metadata: MetaData) -> Table:
    table = Table(OUTBOX_TABLE, metadata, *outbox_columns(), *outbox_forwarding_columns())
    outbox_pending_index(table)
    return table


@dataclass(frozen=True)
class SecurityEvent:
    """Who did what to whom, from where, when, and how it ended."""

    type: str  # e.g. "session.login_succeeded"
    occurred_at: datetime
    actor: str | None = None  # "user:<id>", "service:<name>", "anonymous"
    subject: str | None = None  # the user (or key) affected
    workspace_id: str | None = None
    ip: str | None = None
    device: str | None = None
    outcome: str = "success"
    reason: str | None = None
    details: Mapping[str, str | int | bool | None] = field(default_factory=dict)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def payload(self) -> dict[str, Any]:
        body = {
            "actor": self.actor,
            "subject": self.subject,
            "workspace_id": self.workspace_id,
            "ip": self.ip,
            "device": self.device,
            "outcome": self.outcome,
            "reason": self.reason,
            "details": {k: _clip(v) for k, v in self.details.items()},
        }
        return {k: _clip(v) if isinstance(v, str) else v for k, v in body.items()}


def _clip(value: Any) -> Any:
    return value[:_MAX_DETAIL_LENGTH] if isinstance(value, str) else value


# Set on the pooled connection of a transaction that emitted: when the connection goes back
# to the pool (after the commit) the service's audit forwarder is woken at once instead of at
# its next poll (palisade.common.relay_loop.Wakeup.ring_on_checkin), so an event reaches the log
# (and the webhooks it feeds) within milliseconds, not a poll interval.
OUTBOX_WAKE_FLAG = "palisade.outbox.emitted"


async def emit(conn: AsyncConnection, table: Table, event: SecurityEvent) -> None:
    """Adds the event to the caller's open transaction (one INSERT, no network)."""
    conn.info[OUTBOX_WAKE_FLAG] = True
    await conn.execute(
        insert(table).values(
            event_id=event.event_id,
            event_type=event.type,
            occurred_at=event.occurred_at,
            payload=json.dumps(event.payload(), sort_keys=True, ensure_ascii=True),
        )
    )
