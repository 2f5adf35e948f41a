"""The transactional outbox: a security event commits in the same transaction as its cause.

Each service has an `outbox_events` table (columns from outbox_columns(), so every service's
migration and table agree). emit() adds one INSERT to the caller's transaction and makes no
network hop; a forwarder ships rows to the audit service in batches and marks them, so an
audit outage delays events but never drops them. Payloads never hold secrets or PII: ids,
outcomes, reasons, IPs and devices only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from palisade.common.db import UTCDateTime

OUTBOX_TABLE = "outbox_events"
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


def outbox_table(metadata: MetaData) -> Table:
    return Table(OUTBOX_TABLE, metadata, *outbox_columns())


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


async def emit(conn: AsyncConnection, table: Table, event: SecurityEvent) -> None:
    """Adds the event to the caller's open transaction (one INSERT, no network)."""
    await conn.execute(
        insert(table).values(
            event_id=event.event_id,
            event_type=event.type,
            occurred_at=event.occurred_at,
            payload=json.dumps(event.payload(), sort_keys=True, ensure_ascii=True),
        )
    )
