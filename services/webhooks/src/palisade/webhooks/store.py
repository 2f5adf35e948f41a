"""The webhooks tables: every query the service makes on endpoints, secrets and deliveries.

Writes that have an event add it to the outbox in the same transaction (palisade.common.outbox),
so an event exists exactly when its change does. Every read and write of the management API
names the workspace, so another workspace's id finds nothing.

For the delivery worker and the intake (see tables.py for the columns and the claim):
- `EndpointService.delivery_target(endpoint_id)` (service.py) is how an attempt gets the
  decrypted URL and live secrets (newest first, expired previous ones left out); it reads
  `target_rows()` here and opens the envelopes through crypto in one call.
- `disable(endpoint_id, reason, now)` disables an enabled endpoint ("gone", "failing") and
  emits webhook.disabled, once: it answers False when the endpoint was already disabled or
  is gone, so exactly one caller sends the owners' email.
- `queue_delivery(conn, …)` inserts one pending delivery in the caller's transaction, or
  nothing when the (endpoint, event) pair is queued already.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.common.outbox import SecurityEvent, emit
from palisade.webhooks.model import PENDING, new_delivery_id
from palisade.webhooks.tables import (
    deliveries,
    delivery_attempts,
    endpoint_secrets,
    endpoints,
    outbox_events,
)


def new_delivery_values(
    *,
    endpoint_id: str,
    workspace_id: str,
    event_id: str,
    event_type: str,
    payload: str,
    now: datetime,
) -> dict[str, Any]:
    """Every column of a new pending delivery, due now, for queue_delivery() (the intake
    builds its rows with this too; payload: palisade.webhooks.model.delivery_body())."""
    return {
        "id": new_delivery_id(),
        "endpoint_id": endpoint_id,
        "workspace_id": workspace_id,
        "event_id": event_id,
        "event_type": event_type,
        "payload": payload,
        "state": PENDING,
        "attempts": 0,
        "schedule_base": 0,
        "next_attempt_at": now,
        "claimed_until": None,
        "claimed_by": None,
        "last_status": None,
        "last_error": None,
        "last_attempt_at": None,
        "created_at": now,
    }


def _mine(workspace_id: str, endpoint_id: str) -> Any:
    return and_(endpoints.c.id == endpoint_id, endpoints.c.workspace_id == workspace_id)


async def _lock_endpoint(conn: AsyncConnection, workspace_id: str, endpoint_id: str) -> bool:
    """The endpoint exists in the workspace; on Postgres its row is locked to the end of the
    transaction (rotations, retries and deletes of one endpoint queue up; SQLite has one
    writer anyway)."""
    found = await conn.execute(
        select(endpoints.c.id).where(_mine(workspace_id, endpoint_id)).with_for_update()
    )
    return found.first() is not None


# First key of the two-key advisory locks that serialise one workspace's endpoint creations
# (two-key locks never collide with the one-key locks other code takes; any fixed number).
_CREATION_LOCK_CLASS = 0x57480001


def _workspace_lock_key(workspace_id: str) -> int:
    """A stable signed 32-bit number for the workspace (two sharing one only queue up)."""
    digest = hashlib.sha256(workspace_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big", signed=True)


async def _lock_workspace_endpoints(conn: AsyncConnection, workspace_id: str) -> None:
    """Creations of one workspace one at a time, to the end of the transaction, so the count
    before the insert is the count the insert is made at: under READ COMMITTED two parallel
    creations would both see the last free place and both take it. No endpoint row exists to
    lock FOR UPDATE when the workspace has none, hence an advisory lock. SQLite needs none:
    every transaction there starts with BEGIN IMMEDIATE (palisade.common.db), one writer at
    a time."""
    if conn.dialect.name != "postgresql":
        return
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(:cls, :key)"),
        {"cls": _CREATION_LOCK_CLASS, "key": _workspace_lock_key(workspace_id)},
    )


async def queue_delivery(conn: AsyncConnection, values: Mapping[str, Any]) -> bool:
    """One pending delivery (every column of `deliveries`), in the caller's transaction; False
    when its (endpoint_id, event_id) is queued already (a re-fed event never doubles)."""
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    added = await conn.execute(
        dialect_insert(deliveries)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["endpoint_id", "event_id"])
        .returning(deliveries.c.id)
    )
    return added.first() is not None


class WebhookStore:
    def __init__(self, *, engine: AsyncEngine) -> None:
        self._engine = engine

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def create(
        self,
        values: Mapping[str, Any],
        secret_ct: bytes,
        event: SecurityEvent,
        *,
        max_per_workspace: int,
    ) -> bool:
        """The endpoint, its secret and its event; False (nothing written) when the workspace
        has max_per_workspace endpoints already."""
        async with self._engine.begin() as conn:
            await _lock_workspace_endpoints(conn, values["workspace_id"])
            count = await conn.execute(
                select(func.count())
                .select_from(endpoints)
                .where(endpoints.c.workspace_id == values["workspace_id"])
            )
            if count.scalar_one() >= max_per_workspace:
                return False
            await conn.execute(insert(endpoints).values(**values))
            await conn.execute(
                insert(endpoint_secrets).values(
                    endpoint_id=values["id"],
                    secret_ct=secret_ct,
                    created_at=values["created_at"],
                    expires_at=None,
                )
            )
            await emit(conn, outbox_events, event)
            return True

    async def endpoint_row(self, workspace_id: str, endpoint_id: str) -> Any | None:
        async with self._engine.connect() as conn:
            found = await conn.execute(select(endpoints).where(_mine(workspace_id, endpoint_id)))
            return found.first()

    async def endpoint_rows(self, workspace_id: str) -> list[Any]:
        """Newest first (the id breaks ties of one microsecond)."""
        query = (
            select(endpoints)
            .where(endpoints.c.workspace_id == workspace_id)
            .order_by(endpoints.c.created_at.desc(), endpoints.c.id.desc())
        )
        async with self._engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def all_endpoint_rows(self, workspace_id: str | None = None) -> list[Any]:
        """For operators (palisade-webhooks endpoints list): every endpoint, or a workspace's."""
        query = select(endpoints).order_by(endpoints.c.created_at.desc(), endpoints.c.id.desc())
        if workspace_id is not None:
            query = query.where(endpoints.c.workspace_id == workspace_id)
        async with self._engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def update(
        self,
        workspace_id: str,
        endpoint_id: str,
        values: Mapping[str, Any],
        event: SecurityEvent,
    ) -> bool:
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(endpoints).where(_mine(workspace_id, endpoint_id)).values(**values)
            )
            if changed.rowcount != 1:
                return False
            await emit(conn, outbox_events, event)
            return True

    async def delete(self, workspace_id: str, endpoint_id: str, event: SecurityEvent) -> bool:
        """The endpoint, its secrets, and its deliveries with their attempts (pending ones are
        dropped: nothing is sent to an endpoint after its deletion answered)."""
        async with self._engine.begin() as conn:
            if not await _lock_endpoint(conn, workspace_id, endpoint_id):
                return False
            owned = select(deliveries.c.id).where(deliveries.c.endpoint_id == endpoint_id)
            await conn.execute(
                delete(delivery_attempts).where(delivery_attempts.c.delivery_id.in_(owned))
            )
            await conn.execute(delete(deliveries).where(deliveries.c.endpoint_id == endpoint_id))
            await conn.execute(
                delete(endpoint_secrets).where(endpoint_secrets.c.endpoint_id == endpoint_id)
            )
            await conn.execute(delete(endpoints).where(endpoints.c.id == endpoint_id))
            await emit(conn, outbox_events, event)
            return True

    async def rotate(
        self,
        workspace_id: str,
        endpoint_id: str,
        *,
        secret_ct: bytes,
        now: datetime,
        previous_expires_at: datetime,
        event: SecurityEvent,
    ) -> bool:
        """The new secret becomes current; every live older one signs until
        previous_expires_at at the latest (an earlier expiry of an older one stays); the
        expired ones are deleted."""
        secrets = endpoint_secrets.c
        async with self._engine.begin() as conn:
            if not await _lock_endpoint(conn, workspace_id, endpoint_id):
                return False
            await conn.execute(
                update(endpoint_secrets)
                .where(
                    secrets.endpoint_id == endpoint_id,
                    or_(secrets.expires_at.is_(None), secrets.expires_at > previous_expires_at),
                )
                .values(expires_at=previous_expires_at)
            )
            await conn.execute(
                delete(endpoint_secrets).where(
                    secrets.endpoint_id == endpoint_id, secrets.expires_at <= now
                )
            )
            await conn.execute(
                insert(endpoint_secrets).values(
                    endpoint_id=endpoint_id, secret_ct=secret_ct, created_at=now, expires_at=None
                )
            )
            await conn.execute(
                update(endpoints).where(endpoints.c.id == endpoint_id).values(updated_at=now)
            )
            await emit(conn, outbox_events, event)
            return True

    async def target_rows(self, endpoint_id: str, now: datetime) -> tuple[Any, list[bytes]] | None:
        """The endpoint's row and its live secret envelopes, newest first (a previous secret
        whose expires_at has passed is left out); None if the endpoint is gone."""
        secrets = endpoint_secrets.c
        async with self._engine.connect() as conn:
            found_row = await conn.execute(select(endpoints).where(endpoints.c.id == endpoint_id))
            row = found_row.first()
            if row is None:
                return None
            found = await conn.execute(
                select(secrets.secret_ct)
                .where(
                    secrets.endpoint_id == endpoint_id,
                    or_(secrets.expires_at.is_(None), secrets.expires_at > now),
                )
                .order_by(secrets.created_at.desc(), secrets.id.desc())
            )
            return row, [r.secret_ct for r in found]

    async def disable(
        self, endpoint_id: str, reason: str, now: datetime, event: SecurityEvent
    ) -> bool:
        """Disables an enabled endpoint with its reason and emits `event` (webhook.disabled);
        False, and nothing written, when it was disabled already or is gone."""
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(endpoints)
                .where(endpoints.c.id == endpoint_id, endpoints.c.enabled.is_(True))
                .values(enabled=False, disabled_reason=reason, disabled_at=now, updated_at=now)
            )
            if changed.rowcount != 1:
                return False
            await emit(conn, outbox_events, event)
            return True

    async def queue_test(
        self, workspace_id: str, endpoint_id: str, values: Mapping[str, Any]
    ) -> bool:
        """A delivery for this endpoint alone (False: no such endpoint in the workspace)."""
        async with self._engine.begin() as conn:
            if not await _lock_endpoint(conn, workspace_id, endpoint_id):
                return False
            await queue_delivery(conn, values)
            return True

    async def delivery_rows(
        self,
        workspace_id: str,
        endpoint_id: str,
        *,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Any]:
        """Newest first; `after`: the (created_at, id) of the last row of the previous page."""
        d = deliveries.c
        query = (
            select(deliveries)
            .where(d.endpoint_id == endpoint_id, d.workspace_id == workspace_id)
            .order_by(d.created_at.desc(), d.id.desc())
            .limit(limit)
        )
        if after is not None:
            moment, last_id = after
            query = query.where(
                or_(d.created_at < moment, and_(d.created_at == moment, d.id < last_id))
            )
        async with self._engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def retry(
        self, workspace_id: str, endpoint_id: str, delivery_id: str, now: datetime
    ) -> bool:
        """Queues the delivery afresh, due now: a new round of the retry schedule, any lease
        dropped (a worker holding one finds its claim gone and writes nothing)."""
        d = deliveries.c
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(deliveries)
                .where(
                    d.id == delivery_id,
                    d.endpoint_id == endpoint_id,
                    d.workspace_id == workspace_id,
                )
                .values(
                    state=PENDING,
                    next_attempt_at=now,
                    schedule_base=d.attempts,
                    claimed_by=None,
                    claimed_until=None,
                )
            )
            return changed.rowcount == 1

    async def pending_count(self, endpoint_ids: Sequence[str]) -> int:
        """Pending deliveries of these endpoints (for tests and operators)."""
        query = select(deliveries.c.id).where(
            deliveries.c.endpoint_id.in_(list(endpoint_ids)), deliveries.c.state == PENDING
        )
        async with self._engine.connect() as conn:
            return len((await conn.execute(query)).all())
