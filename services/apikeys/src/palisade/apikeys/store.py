"""The apikeys store: the transaction every key operation runs in, and the hot verify read.

State changes are conditional UPDATEs (revoke only what is not revoked, rotate only what has
not been rotated), so concurrent requests on one key agree on a single winner on both
backends: on Postgres the second UPDATE waits for the first to commit and then finds its
condition false; on SQLite BEGIN IMMEDIATE serialises the transactions.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.apikeys.history_seal import needs_seal
from palisade.apikeys.model import KeyEvent, KeyRecord, RateLimit, Usage
from palisade.apikeys.tables import TS, api_key_events, api_keys, outbox
from palisade.common.direct_reads import DirectReads
from palisade.common.outbox import SecurityEvent, emit

_KEY_COLUMNS = [
    api_keys.c[name]
    for name in (
        "id",
        "workspace_id",
        "name",
        "type",
        "mode",
        "prefix",
        "last4",
        "scopes",
        "allowed_origins",
        "rate_limit_rpm",
        "rate_limit_burst",
        "created_by",
        "created_at",
        "expires_at",
        "revoked_at",
        "revoke_reason",
        "replaced_by",
        "overlap_ends_at",
        "last_used_at",
        "last_used_ip",
    )
]
_EVENT_COLUMNS = [
    api_key_events.c[name]
    for name in ("type", "occurred_at", "actor", "ip", "device", "source", "id", "client_ct")
]

# The gateway's question, by the key's SHA-256: one statement, no transaction.
VERIFY_BY_HASH = select(
    api_keys.c.id,
    api_keys.c.workspace_id,
    api_keys.c.type,
    api_keys.c.mode,
    api_keys.c.scopes,
    api_keys.c.allowed_origins,
    api_keys.c.rate_limit_rpm,
    api_keys.c.rate_limit_burst,
    api_keys.c.created_by,
    api_keys.c.expires_at,
    api_keys.c.revoked_at,
    api_keys.c.overlap_ends_at,
).where(api_keys.c.lookup_hash == bindparam("lookup_hash"))


def record_from(row: Sequence[Any]) -> KeyRecord:
    (
        key_id,
        workspace_id,
        name,
        key_type,
        mode,
        prefix,
        last4,
        scopes,
        origins,
        rpm,
        burst,
        *rest,
    ) = row
    return KeyRecord(
        key_id,
        workspace_id,
        name,
        key_type,
        mode,
        prefix,
        last4,
        tuple(json.loads(scopes)),
        tuple(json.loads(origins)),
        rate_limit_of(rpm, burst),
        *rest,
    )


def event_from(row: Sequence[Any]) -> KeyEvent:
    kind, occurred_at, actor, ip, device, source, event_id, client_ct = row
    sealed = None if client_ct is None else bytes(client_ct)
    return KeyEvent(kind, occurred_at, actor, ip, device, source, event_id, sealed)


def rate_limit_of(rpm: int | None, burst: int | None) -> RateLimit | None:
    return None if rpm is None or burst is None else RateLimit(rpm, burst)


class KeysTransaction:
    """One database transaction of the key service (see ApiKeyStore.transaction)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def insert_key(
        self,
        record: KeyRecord,
        *,
        lookup_hash: bytes,
        secret_ct: bytes,
    ) -> None:
        limit = record.rate_limit
        await self.conn.execute(
            insert(api_keys).values(
                id=record.id,
                workspace_id=record.workspace_id,
                name=record.name,
                type=record.type,
                mode=record.mode,
                lookup_hash=lookup_hash,
                secret_ct=secret_ct,
                prefix=record.prefix,
                last4=record.last4,
                scopes=json.dumps(list(record.scopes)),
                allowed_origins=json.dumps(list(record.allowed_origins)),
                rate_limit_rpm=limit.requests_per_minute if limit else None,
                rate_limit_burst=limit.burst if limit else None,
                created_by=record.created_by,
                created_at=record.created_at,
                expires_at=record.expires_at,
            )
        )

    async def key(self, key_id: str, workspace_id: str) -> KeyRecord | None:
        row = (
            await self.conn.execute(
                select(*_KEY_COLUMNS).where(
                    api_keys.c.id == key_id, api_keys.c.workspace_id == workspace_id
                )
            )
        ).first()
        return None if row is None else record_from(row)

    async def key_by_id(self, key_id: str) -> KeyRecord | None:
        """Any workspace's key: for operators (the CLI), never for a person's request."""
        row = (
            await self.conn.execute(select(*_KEY_COLUMNS).where(api_keys.c.id == key_id))
        ).first()
        return None if row is None else record_from(row)

    async def key_by_hash(self, lookup_hash: bytes) -> tuple[KeyRecord, bytes] | None:
        row = (
            await self.conn.execute(
                select(*_KEY_COLUMNS, api_keys.c.lookup_hash).where(
                    api_keys.c.lookup_hash == lookup_hash
                )
            )
        ).first()
        return None if row is None else (record_from(row[:-1]), bytes(row[-1]))

    async def lookup_hashes(self, key_ids: Sequence[str]) -> list[bytes]:
        rows = await self.conn.execute(
            select(api_keys.c.lookup_hash).where(api_keys.c.id.in_(list(key_ids)))
        )
        return [bytes(r[0]) for r in rows]

    async def secret(self, key_id: str, workspace_id: str) -> bytes | None:
        row = (
            await self.conn.execute(
                select(api_keys.c.secret_ct).where(
                    api_keys.c.id == key_id, api_keys.c.workspace_id == workspace_id
                )
            )
        ).first()
        return None if row is None else bytes(row[0])

    async def keys(
        self, workspace_id: str, *, before: tuple[datetime, str] | None, limit: int
    ) -> list[KeyRecord]:
        """The workspace's keys, newest first, after the `before` position (a page token)."""
        query = select(*_KEY_COLUMNS).where(api_keys.c.workspace_id == workspace_id)
        if before is not None:
            created_at, key_id = before
            query = query.where(
                or_(
                    api_keys.c.created_at < created_at,
                    and_(api_keys.c.created_at == created_at, api_keys.c.id < key_id),
                )
            )
        query = query.order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc()).limit(limit)
        return [record_from(row) for row in await self.conn.execute(query)]

    async def live_keys_of_creator(
        self, user_id: str, workspace_id: str | None, *, now: datetime, limit: int
    ) -> list[KeyRecord]:
        """Keys the person created that still work at `now` (not revoked, not expired, not past
        a rotation's overlap), in one workspace or all, locked for the revoking transaction, in
        id order (as every other multi-key writer locks them). Dead keys stay as they ended."""
        query = select(*_KEY_COLUMNS).where(
            api_keys.c.created_by == user_id,
            api_keys.c.revoked_at.is_(None),
            or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
            or_(api_keys.c.overlap_ends_at.is_(None), api_keys.c.overlap_ends_at > now),
        )
        if workspace_id is not None:
            query = query.where(api_keys.c.workspace_id == workspace_id)
        query = query.order_by(api_keys.c.id).limit(limit)
        if self.conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return [record_from(row) for row in await self.conn.execute(query)]

    async def count_keys(self, workspace_id: str | None = None) -> int:
        query = select(func.count()).select_from(api_keys)
        if workspace_id is not None:
            query = query.where(api_keys.c.workspace_id == workspace_id)
        return int((await self.conn.execute(query)).scalar_one())

    async def revoke(self, key_id: str, *, now: datetime, reason: str) -> bool:
        """Revokes the key unless it already is; returns whether this call revoked it."""
        result = await self.conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now, revoke_reason=reason)
        )
        return bool(result.rowcount)

    async def rotate_out(
        self,
        key_id: str,
        *,
        now: datetime,
        replaced_by: str,
        overlap_ends_at: datetime,
        revoke: bool,
    ) -> bool:
        """Marks an active key as replaced (with its overlap's end, or revoked at once);
        returns False if it is no longer active (another rotation or a revocation won)."""
        values: dict[str, Any] = {"replaced_by": replaced_by, "overlap_ends_at": overlap_ends_at}
        if revoke:
            values.update(revoked_at=now, revoke_reason="rotated")
        result = await self.conn.execute(
            update(api_keys)
            .where(
                api_keys.c.id == key_id,
                api_keys.c.revoked_at.is_(None),
                api_keys.c.replaced_by.is_(None),
                api_keys.c.overlap_ends_at.is_(None),
                or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now),
            )
            .values(**values)
        )
        return bool(result.rowcount)

    async def due_expiries(self, now: datetime, *, after: str = "", limit: int) -> list[str]:
        """Ids of the keys whose validity (expiry or rotation overlap) has ended and whose end
        is not recorded yet, in id order (the order every multi-key writer locks rows in),
        after `after`. Served by the partial indexes of migration 0003."""
        ended = or_(api_keys.c.expires_at <= now, api_keys.c.overlap_ends_at <= now)
        query = (
            select(api_keys.c.id)
            .where(api_keys.c.expiry_recorded_at.is_(None), ended, api_keys.c.id > after)
            .order_by(api_keys.c.id)
            .limit(limit)
        )
        return [str(row[0]) for row in await self.conn.execute(query)]

    async def claim_expiry(self, key_id: str, *, now: datetime) -> KeyRecord | None:
        """Claims the recording of a key's expiry and returns the key as the claim found it,
        or None if another recorder claimed it first. The row comes from the claiming UPDATE
        itself, so it includes a revocation that committed after due_expiries read the key
        (on Postgres the UPDATE waits for such a transaction and then reads its row)."""
        row = (
            await self.conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.expiry_recorded_at.is_(None))
                .values(expiry_recorded_at=now)
                .returning(*_KEY_COLUMNS)
            )
        ).first()
        return None if row is None else record_from(row)

    async def has_event(self, key_id: str, event_type: str) -> bool:
        query = (
            select(api_key_events.c.id)
            .where(api_key_events.c.key_id == key_id, api_key_events.c.type == event_type)
            .limit(1)
        )
        return (await self.conn.execute(query)).first() is not None

    async def add_event(self, key_id: str, workspace_id: str, event: KeyEvent) -> None:
        """event: sealed where it is a person's (history_seal.py); a person's client in
        plaintext is refused, so no step can store one by mistake."""
        if needs_seal(event):
            raise ValueError("a person's client must be sealed before it is stored")
        await self.conn.execute(
            insert(api_key_events).values(
                key_id=key_id,
                workspace_id=workspace_id,
                type=event.type,
                occurred_at=event.occurred_at,
                actor=event.actor,
                ip=event.ip,
                device=event.device,
                source=event.source,
                client_ct=event.client_ct,
            )
        )

    async def events(
        self, key_id: str, *, before: tuple[datetime, int] | None, limit: int
    ) -> list[KeyEvent]:
        query = select(*_EVENT_COLUMNS).where(api_key_events.c.key_id == key_id)
        if before is not None:
            occurred_at, event_id = before
            query = query.where(
                or_(
                    api_key_events.c.occurred_at < occurred_at,
                    and_(
                        api_key_events.c.occurred_at == occurred_at,
                        api_key_events.c.id < event_id,
                    ),
                )
            )
        query = query.order_by(
            api_key_events.c.occurred_at.desc(), api_key_events.c.id.desc()
        ).limit(limit)
        return [event_from(row) for row in await self.conn.execute(query)]

    async def record_usage(self, usages: Sequence[Usage]) -> None:
        """Moves last_used_at/ip forward only: a late, older batch never overwrites a newer.

        A key whose creator's account was deleted keeps no IP (creator_erased_at): the
        condition is in the SET itself, so it is read from the row the UPDATE writes. On
        Postgres an UPDATE that waited for the erasure's row lock re-reads the row once the
        erasure commits and stores NULL; on SQLite the transactions take turns. A gateway's
        batch arriving after the erasure cannot bring the address back."""
        if not usages:
            return
        statement = (
            update(api_keys)
            .where(
                api_keys.c.id == bindparam("b_id"),
                or_(
                    api_keys.c.last_used_at.is_(None),
                    api_keys.c.last_used_at < bindparam("b_at", type_=TS),
                ),
            )
            .values(
                last_used_at=bindparam("b_at", type_=TS),
                last_used_ip=case(
                    (api_keys.c.creator_erased_at.is_(None), bindparam("b_ip")), else_=None
                ),
            )
        )
        await self.conn.execute(
            statement, [{"b_id": u.key_id, "b_at": u.used_at, "b_ip": u.ip} for u in usages]
        )

    async def emit(self, event: SecurityEvent) -> None:
        await emit(self.conn, outbox, event)


class ApiKeyStore:
    def __init__(self, *, engine: AsyncEngine, reads: DirectReads | None = None) -> None:
        self._engine = engine
        self._reads = reads or DirectReads(engine, None)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[KeysTransaction]:
        async with self._engine.begin() as conn:
            yield KeysTransaction(conn)

    async def verify_row(self, lookup_hash: bytes) -> tuple[Any, ...] | None:
        """The VERIFY_BY_HASH row of a key (any state), or None: one statement."""
        return await self._reads.one(VERIFY_BY_HASH, {"lookup_hash": lookup_hash})
