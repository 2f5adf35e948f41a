"""One batch of audit's streamed events turned into deliveries, with the cursor, in one
transaction.

Each event goes to every ENABLED endpoint of ITS workspace that subscribed to its type (an event
of no workspace, the system chain's, goes nowhere). The body is built once per event
(model.delivery_body: the exact bytes stored, signed and sent to each endpoint), and the
stream's cursor is written in the same transaction as the deliveries: after a crash either
both are there or neither, so a resumed stream neither skips an event nor queues one twice
(and a re-fed event would still be refused by UNIQUE(endpoint_id, event_id)).

What a receiver gets of an event (`data`): its public fields only, id, type, occurredAt,
actor, subject, outcome, reason and details (the same the security log's HTTP API shows,
minus the client). NOT its IP address, user agent, device or location: those are personal
data of whoever acted, and a webhook sends them out of Palisade to a URL the workspace chose,
where crypto-shredding can no longer erase them (an erased person's address would live on in
every receiver's logs), so the stream is read with include_pii=false and they never reach this
service at all. Details hold ids and flags, never secrets or PII (audit's catalogue rule).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.webhooks.model import PENDING, delivery_body, new_delivery_id, rfc3339
from palisade.webhooks.store import queue_delivery
from palisade.webhooks.tables import endpoints, stream_cursor
from palisade_api.audit.v1 import audit_pb2

CURSOR_ROW = 1


def event_data(event: audit_pb2.Event) -> dict[str, Any]:
    """The `data` of a delivery body: the event's public fields (see the module docstring)."""
    return {
        "id": event.id,
        "type": event.type,
        "occurredAt": rfc3339(occurred_at(event)),
        "actor": {"type": event.actor.type, "id": event.actor.id},
        "subject": event.subject,
        "outcome": event.outcome,
        "reason": event.reason,
        "details": dict(sorted(event.details.items())),
    }


def occurred_at(event: audit_pb2.Event) -> datetime:
    return event.occurred_at.ToDatetime(tzinfo=UTC)


async def load_cursor(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        found = await conn.execute(
            select(stream_cursor.c.cursor).where(stream_cursor.c.id == CURSOR_ROW)
        )
        value = found.scalar_one_or_none()
    return str(value) if value is not None else None


async def _save_cursor(conn: AsyncConnection, cursor: str, now: datetime) -> None:
    changed = await conn.execute(
        update(stream_cursor)
        .where(stream_cursor.c.id == CURSOR_ROW)
        .values(cursor=cursor, updated_at=now)
    )
    if changed.rowcount == 0:
        await conn.execute(
            insert(stream_cursor).values(id=CURSOR_ROW, cursor=cursor, updated_at=now)
        )


async def _subscribers(
    conn: AsyncConnection, workspaces: set[str]
) -> dict[str, list[tuple[str, frozenset[str]]]]:
    """Per workspace, its enabled endpoints and the types each subscribed to."""
    found: dict[str, list[tuple[str, frozenset[str]]]] = defaultdict(list)
    if not workspaces:
        return found
    rows = await conn.execute(
        select(endpoints.c.id, endpoints.c.workspace_id, endpoints.c.event_types)
        .where(endpoints.c.workspace_id.in_(sorted(workspaces)), endpoints.c.enabled.is_(True))
        .order_by(endpoints.c.id)
    )
    for row in rows:
        found[row.workspace_id].append((row.id, frozenset(json.loads(row.event_types))))
    return found


async def fan_out(
    engine: AsyncEngine, batch: Sequence[audit_pb2.StreamedEvent], *, now: datetime
) -> int:
    """Queues the batch's deliveries and moves the cursor past its last event; returns how
    many deliveries were queued (0 for events nobody subscribed to)."""
    if not batch:
        return 0
    queued = 0
    async with engine.begin() as conn:
        subscribers = await _subscribers(
            conn, {item.event.workspace_id for item in batch if item.event.workspace_id}
        )
        for item in batch:
            event = item.event
            matching = [
                endpoint_id
                for endpoint_id, types in subscribers.get(event.workspace_id, [])
                if event.type in types
            ]
            if not matching:
                continue
            body = delivery_body(event.type, occurred_at(event), event_data(event))
            for endpoint_id in matching:
                added = await queue_delivery(
                    conn,
                    {
                        "id": new_delivery_id(),
                        "endpoint_id": endpoint_id,
                        "workspace_id": event.workspace_id,
                        "event_id": event.id,
                        "event_type": event.type,
                        "payload": body,
                        "state": PENDING,
                        "attempts": 0,
                        "schedule_base": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    },
                )
                queued += int(added)
        await _save_cursor(conn, batch[-1].cursor, now)
    return queued
