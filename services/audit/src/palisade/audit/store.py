"""The audit store: transactions, chain heads, appending events, reading them back.

Appending is the one write that must be ordered. Ingest locks the chain-head rows of the
workspaces it appends to (Postgres: SELECT ... FOR UPDATE, in workspace-id order so two batches
touching the same workspaces never wait for each other in a cycle), so concurrent batches for
one workspace take turns and each continues where the last one ended; batches for different
workspaces do not wait for each other. On SQLite BEGIN IMMEDIATE makes every transaction the
only writer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import psycopg.errors
from sqlalchemy import Select, String, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.audit.model import GENESIS_HASH, ChainHead, SealedEvent, StoredEvent
from palisade.audit.tables import chains, events

# What a StoredEvent is read from, in this order.
EVENT_COLUMNS = (
    events.c.id,
    events.c.workspace_id,
    events.c.seq,
    events.c.prev_hash,
    events.c.event_id,
    events.c.type,
    events.c.occurred_at,
    events.c.recorded_at,
    events.c.source,
    events.c.actor,
    events.c.subject,
    events.c.ip_ct,
    events.c.user_agent_ct,
    events.c.location_ct,
    events.c.pii_erased,
    events.c.device_browser,
    events.c.device_os,
    events.c.device_kind,
    events.c.outcome,
    events.c.reason,
    events.c.details,
    events.c.hash,
)
# SQL IN lists are kept at most this long.
_IN_CHUNK = 1000
# The columns an append writes (tx_order and id come from their defaults), in the order of the
# hash's encoding (SealedEvent's fields) and then the hash.
APPENDED = (
    "workspace_id",
    "seq",
    "prev_hash",
    "event_id",
    "type",
    "occurred_at",
    "recorded_at",
    "source",
    "actor",
    "subject",
    "ip_ct",
    "user_agent_ct",
    "location_ct",
    "pii_erased",
    "device_browser",
    "device_os",
    "device_kind",
    "outcome",
    "reason",
    "details",
    "hash",
)
# Postgres: rows in COPY's binary format (https://www.postgresql.org/docs/current/sql-copy.html):
# a signature, flags and header extension length, then per row the field count and each
# field's length and bytes, then -1. No escaping, no text to parse on either side.
_COPY_EVENTS = f"COPY events ({', '.join(APPENDED)}) FROM STDIN (FORMAT BINARY)"
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
COPY_TRAILER = b"\xff\xff"
# Postgres, on the transaction's driver connection (see AuditTransaction._driver): the chain
# heads locked in workspace-id order, and moved all at once.
_LOCK_HEADS = (
    "SELECT workspace_id, size, head, anchor_size, anchor_head, anchor_checkpoint_id"
    " FROM chains WHERE workspace_id = ANY(%s) ORDER BY workspace_id FOR UPDATE"
)
_MOVE_HEADS = (
    "UPDATE chains SET size = moved.size, head = moved.head"
    " FROM unnest(%s::text[], %s::int8[], %s::bytea[]) AS moved(workspace_id, size, head)"
    " WHERE chains.workspace_id = moved.workspace_id"
)


class NewRow(NamedTuple):
    """An event to append: its values (APPENDED's columns, in order) and the same values as one
    row of a binary COPY (palisade.audit.ingest.rows builds both)."""

    values: tuple[Any, ...]
    binary: bytes


def select_events() -> Select[Any]:
    return select(*EVENT_COLUMNS)


def stored_event(row: Sequence[Any]) -> StoredEvent:
    position, *sealed, digest = row
    fields = list(sealed)
    fields[13] = bool(fields[13])  # pii_erased: SQLite answers 0/1
    return StoredEvent(position=position, sealed=SealedEvent(*fields), hash=bytes(digest))


def chain_head(row: Sequence[Any]) -> ChainHead:
    workspace_id, size, head, anchor_size, anchor_head, anchor_checkpoint_id = row
    return ChainHead(
        workspace_id, size, bytes(head), anchor_size, bytes(anchor_head), anchor_checkpoint_id
    )


_CHAIN_COLUMNS = (
    chains.c.workspace_id,
    chains.c.size,
    chains.c.head,
    chains.c.anchor_size,
    chains.c.anchor_head,
    chains.c.anchor_checkpoint_id,
)


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


class AppendConflict(Exception):
    """An appended event's id is stored already (or its position taken)."""


class AuditTransaction:
    """One database transaction of the audit service (see AuditStore.transaction)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    @property
    def locks_rows(self) -> bool:
        return self.conn.dialect.name == "postgresql"

    async def existing_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        ids = list(event_ids)
        if not ids:
            return set()
        if self.locks_rows:  # Postgres: one array parameter instead of an IN list
            rows = await self.conn.execute(
                select(events.c.event_id).where(
                    events.c.event_id == func.any(bindparam("ids", ids, type_=ARRAY(String)))
                )
            )
            return {r[0] for r in rows}
        found: set[str] = set()
        for chunk in _chunks(ids):
            rows = await self.conn.execute(
                select(events.c.event_id).where(events.c.event_id.in_(chunk))
            )
            found.update(r[0] for r in rows)
        return found

    async def stored_versions(self, event_ids: Sequence[str]) -> dict[str, StoredEvent]:
        """The stored events of these ids (to compare with a duplicate's content)."""
        found: dict[str, StoredEvent] = {}
        for chunk in _chunks(list(event_ids)):
            rows = await self.conn.execute(select_events().where(events.c.event_id.in_(chunk)))
            for row in rows:
                event = stored_event(row)
                found[event.sealed.event_id] = event
        return found

    async def lock_chains(self, workspace_ids: Iterable[str]) -> dict[str, ChainHead]:
        """The heads of these chains (created empty where missing), locked for this
        transaction on Postgres: the existing ones first, in workspace-id order, then the new
        ones (inserted in that order), so two transactions never wait for each other in a
        cycle."""
        wanted = sorted(set(workspace_ids))
        if not wanted:
            return {}
        heads = await self._heads(wanted)
        missing = [w for w in wanted if w not in heads]
        if missing:
            empty = [
                {
                    "workspace_id": w,
                    "size": 0,
                    "head": GENESIS_HASH,
                    "anchor_size": 0,
                    "anchor_head": GENESIS_HASH,
                }
                for w in missing
            ]
            dialect = postgresql if self.locks_rows else sqlite
            await self.conn.execute(dialect.insert(chains).on_conflict_do_nothing(), empty)
            heads.update(await self._heads(missing))
        return heads

    async def _driver(self) -> Any:
        """The transaction's own psycopg connection (Postgres), for ingest's statements: one
        prepared statement with array parameters each, without the engine's compile, bind and
        result layers (which cost more CPU than the statements on batches of 100 events)."""
        raw = await self.conn.get_raw_connection()
        return raw.driver_connection

    async def _heads(self, wanted: Sequence[str]) -> dict[str, ChainHead]:
        heads: dict[str, ChainHead] = {}
        if self.locks_rows:  # Postgres: one statement, one array parameter, rows locked
            cursor = await (await self._driver()).execute(_LOCK_HEADS, (list(wanted),))
            for row in await cursor.fetchall():
                head = chain_head(row)
                heads[head.workspace_id] = head
            return heads
        for chunk in _chunks(wanted):
            query = (
                select(*_CHAIN_COLUMNS)
                .where(chains.c.workspace_id.in_(chunk))
                .order_by(chains.c.workspace_id)
            )
            if self.locks_rows:
                query = query.with_for_update()
            for row in await self.conn.execute(query):
                head = chain_head(row)
                heads[head.workspace_id] = head
        return heads

    async def chain(self, workspace_id: str, *, lock: bool = False) -> ChainHead | None:
        query = select(*_CHAIN_COLUMNS).where(chains.c.workspace_id == workspace_id)
        if lock and self.locks_rows:
            query = query.with_for_update()
        row = (await self.conn.execute(query)).first()
        return chain_head(row) if row is not None else None

    async def chains(self) -> list[ChainHead]:
        rows = await self.conn.execute(select(*_CHAIN_COLUMNS).order_by(chains.c.workspace_id))
        return [chain_head(r) for r in rows]

    async def append(self, rows: Sequence[NewRow]) -> None:
        """Inserts the rows; AppendConflict if one of their event ids (or positions) is taken
        (the transaction is then unusable: roll it back)."""
        if not rows:
            return
        try:
            if not self.locks_rows:
                await self.conn.execute(
                    insert(events), [dict(zip(APPENDED, r.values, strict=True)) for r in rows]
                )
                return
            # Postgres: one binary COPY in this transaction, on its own connection, written as
            # one block. An INSERT of many rows through the engine spends more CPU binding
            # parameters than the database spends storing them, and a COPY row by row more
            # than building the rows (measured in bench/p7_audit_ingest.py).
            driver = await self._driver()
            async with driver.cursor() as cursor, cursor.copy(_COPY_EVENTS) as copy:
                await copy.write(
                    b"".join((COPY_SIGNATURE, *(r.binary for r in rows), COPY_TRAILER))
                )
        except (IntegrityError, psycopg.errors.UniqueViolation):
            raise AppendConflict() from None

    async def move_heads(self, heads: Iterable[tuple[str, int, bytes]]) -> None:
        """Sets (workspace id, size, head) of chains this transaction has locked."""
        values = [{"w": w, "s": s, "h": h} for w, s, h in heads]
        if not values:
            return
        if self.locks_rows:  # Postgres: all heads in one statement
            await (await self._driver()).execute(
                _MOVE_HEADS,
                ([v["w"] for v in values], [v["s"] for v in values], [v["h"] for v in values]),
            )
            return
        await self.conn.execute(
            update(chains)
            .where(chains.c.workspace_id == bindparam("w"))
            .values(size=bindparam("s"), head=bindparam("h")),
            values,
        )

    async def chain_events(
        self, workspace_id: str, *, after: tuple[int, int] = (0, 0), limit: int = 1000
    ) -> list[StoredEvent]:
        """A chain's events in stored order (seq, then id) after the (seq, id) given."""
        seq, position = after
        rows = await self.conn.execute(
            select_events()
            .where(
                events.c.workspace_id == workspace_id,
                or_(events.c.seq > seq, and_(events.c.seq == seq, events.c.id > position)),
            )
            .order_by(events.c.seq, events.c.id)
            .limit(limit)
        )
        return [stored_event(r) for r in rows]

    async def hash_at(self, workspace_id: str, seq: int) -> bytes | None:
        """The stored hash of a chain's event at seq (None: no such row, or several)."""
        rows = (
            await self.conn.execute(
                select(events.c.hash)
                .where(events.c.workspace_id == workspace_id, events.c.seq == seq)
                .limit(2)
            )
        ).all()
        return bytes(rows[0][0]) if len(rows) == 1 else None

    async def workspaces_with_events(self) -> set[str]:
        rows = await self.conn.execute(select(events.c.workspace_id).distinct())
        return {r[0] for r in rows}


class AuditStore:
    def __init__(self, *, engine: AsyncEngine) -> None:
        self._engine = engine

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AuditTransaction]:
        """Commits when the block ends normally, rolls back if it raises."""
        async with self._engine.begin() as conn:
            yield AuditTransaction(conn)
