"""The visitors table (and the job cursors): every query the service makes, and nothing else.

Writes that have an event add it to the outbox in the same transaction (palisade.common.outbox),
so an event exists exactly when its change does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.common.outbox import SecurityEvent, emit
from palisade.visitors.chats.model import VISITOR
from palisade.visitors.chats.tables import chats, messages
from palisade.visitors.model import StoredVisitor
from palisade.visitors.pii import IndexedField
from palisade.visitors.tables import maintenance_cursors, outbox_events, visitors

MAX_MATCHES = 100  # the largest lookup page

# What erasure clears: every envelope, every token, and the versions they were under.
_CLEARED: dict[str, Any] = {
    "name_ct": None,
    "email_ct": None,
    "phone_ct": None,
    "email_index": None,
    "phone_index": None,
    "data_key_version": None,
    "index_key_version": None,
}


async def _redact_messages(conn: AsyncConnection, visitor_id: str) -> int:
    """Empties the bodies of the messages the visitor wrote (sender "visitor") in their chats:
    what they typed may hold their PII. The search index follows in the same statement (the
    Postgres tsvector is generated from body; SQLite's FTS5 table by its UPDATE trigger). Agent
    messages stay as written. Idempotent: already emptied bodies are not touched again."""
    result = await conn.execute(
        update(messages)
        .where(
            messages.c.chat_id.in_(select(chats.c.id).where(chats.c.visitor_id == visitor_id)),
            messages.c.sender == VISITOR,
            messages.c.body != "",
        )
        .values(body="")
    )
    return int(result.rowcount)


def _stored(row: Any) -> StoredVisitor:
    return StoredVisitor(
        id=row.id,
        workspace_id=row.workspace_id,
        test=bool(row.test),
        created_at=row.created_at,
        erased_at=row.erased_at,
        name_ct=row.name_ct,
        email_ct=row.email_ct,
        phone_ct=row.phone_ct,
        email_index=row.email_index,
        phone_index=row.phone_index,
        data_key_version=row.data_key_version,
        index_key_version=row.index_key_version,
        source=row.source,
    )


class VisitorStore:
    def __init__(self, *, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert(self, row: StoredVisitor, event: SecurityEvent) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                insert(visitors).values(
                    id=row.id,
                    workspace_id=row.workspace_id,
                    test=row.test,
                    created_at=row.created_at,
                    erased_at=None,
                    name_ct=row.name_ct,
                    email_ct=row.email_ct,
                    phone_ct=row.phone_ct,
                    email_index=row.email_index,
                    phone_index=row.phone_index,
                    data_key_version=row.data_key_version,
                    index_key_version=row.index_key_version,
                    source=row.source,
                )
            )
            await emit(conn, outbox_events, event)

    async def get(self, workspace_id: str, visitor_id: str, *, test: bool) -> StoredVisitor | None:
        """The visitor if it is this workspace's and this mode's; None otherwise (alike)."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(visitors).where(
                        visitors.c.id == visitor_id,
                        visitors.c.workspace_id == workspace_id,
                        visitors.c.test == test,
                    )
                )
            ).first()
        return None if row is None else _stored(row)

    async def find(
        self,
        workspace_id: str,
        field: IndexedField,
        tokens: Sequence[str],
        *,
        test: bool,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[StoredVisitor]:
        """Live visitors of the workspace and mode whose token is one of tokens, newest first
        (id the tie-break), after the (created_at, id) of the last one a page showed."""
        column = visitors.c.email_index if field == "email" else visitors.c.phone_index
        statement = select(visitors).where(
            visitors.c.workspace_id == workspace_id,
            column.in_(list(tokens)),
            visitors.c.test == test,
            visitors.c.erased_at.is_(None),
        )
        if after is not None:
            created_at, last_id = after
            statement = statement.where(
                or_(
                    visitors.c.created_at < created_at,
                    and_(visitors.c.created_at == created_at, visitors.c.id < last_id),
                )
            )
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                statement.order_by(visitors.c.created_at.desc(), visitors.c.id.desc()).limit(
                    min(limit, MAX_MATCHES + 1)
                )
            )
            return [_stored(r) for r in rows]

    async def finish_erasure(self, visitor_id: str, now: datetime, event: SecurityEvent) -> bool:
        """Clears the row's PII and tokens, redacts the messages the visitor wrote and records
        the event, all in one transaction, once: False if the row was already erased (or is
        gone). Called after the subject key is shredded. The row's UPDATE comes first: it
        waits for a post holding the visitor's share lock, so that message is redacted too."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(visitors)
                .where(visitors.c.id == visitor_id, visitors.c.erased_at.is_(None))
                .values(erased_at=now, **_CLEARED)
            )
            if result.rowcount != 1:
                return False
            await _redact_messages(conn, visitor_id)
            await emit(conn, outbox_events, event)
            return True

    async def redact_erased_messages(self, visitor_id: str) -> int:
        """Redacts an already erased visitor's messages (an erasure committed before erasure
        redacted them): a repeated erase request finishes it. A no-op once done."""
        async with self._engine.begin() as conn:
            erased = await conn.scalar(
                select(visitors.c.id).where(
                    visitors.c.id == visitor_id, visitors.c.erased_at.isnot(None)
                )
            )
            if erased is None:
                return 0
            return await _redact_messages(conn, visitor_id)

    # -- key maintenance ----------------------------------------------------------------------

    async def rows_per_data_version(self) -> dict[int, int]:
        """How many rows hold envelopes under each data key version."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(visitors.c.data_key_version, func.count())
                .where(visitors.c.data_key_version.isnot(None))
                .group_by(visitors.c.data_key_version)
            )
            return {int(v): int(n) for v, n in rows}

    async def data_versions_in_use(self) -> list[int]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(visitors.c.data_key_version)
                .where(visitors.c.data_key_version.isnot(None))
                .distinct()
            )
            return sorted(int(v) for (v,) in rows)

    async def index_versions_in_use(self) -> list[int]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(visitors.c.index_key_version)
                .where(visitors.c.index_key_version.isnot(None))
                .distinct()
            )
            return sorted(int(v) for (v,) in rows)

    async def below_data_version(
        self, version: int, *, after: str, limit: int
    ) -> list[StoredVisitor]:
        """Live rows under data key versions older than version, in id order after `after`."""
        return await self._page(visitors.c.data_key_version < version, after, limit)

    async def below_index_version(
        self, version: int, *, after: str, limit: int
    ) -> list[StoredVisitor]:
        return await self._page(visitors.c.index_key_version < version, after, limit)

    async def _page(self, condition: Any, after: str, limit: int) -> list[StoredVisitor]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(visitors)
                .where(condition, visitors.c.id > after, visitors.c.erased_at.is_(None))
                .order_by(visitors.c.id)
                .limit(limit)
            )
            return [_stored(r) for r in rows]

    async def replace_envelopes(
        self, row: StoredVisitor, envelopes: dict[str, bytes | None], version: int
    ) -> bool:
        """Stores rewrapped envelopes if the row is still as it was read (not erased, nor moved
        by another replica meanwhile): an erasure always wins over a rewrap."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(visitors)
                .where(
                    visitors.c.id == row.id,
                    visitors.c.erased_at.is_(None),
                    visitors.c.data_key_version == row.data_key_version,
                )
                .values(data_key_version=version, **envelopes)
            )
            return result.rowcount == 1

    async def replace_tokens(
        self, row: StoredVisitor, tokens: dict[str, str | None], version: int
    ) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(visitors)
                .where(
                    visitors.c.id == row.id,
                    visitors.c.erased_at.is_(None),
                    visitors.c.index_key_version == row.index_key_version,
                )
                .values(index_key_version=version, **tokens)
            )
            return result.rowcount == 1

    async def cursor(self, job: str, target_version: int) -> str:
        """Where the job stopped for this target version ("" to start from the beginning)."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(maintenance_cursors).where(maintenance_cursors.c.job == job)
                )
            ).first()
        if row is None or row.target_version != target_version:
            return ""
        return str(row.last_id)

    async def save_cursor(self, job: str, target_version: int, last_id: str, now: datetime) -> None:
        async with self._engine.begin() as conn:
            await _upsert_cursor(conn, job, target_version, last_id, now)


async def _upsert_cursor(
    conn: AsyncConnection, job: str, target_version: int, last_id: str, now: datetime
) -> None:
    values = {"target_version": target_version, "last_id": last_id, "updated_at": now}
    result = await conn.execute(
        update(maintenance_cursors).where(maintenance_cursors.c.job == job).values(**values)
    )
    if result.rowcount == 0:
        try:
            async with conn.begin_nested():  # another replica may insert it first
                await conn.execute(insert(maintenance_cursors).values(job=job, **values))
        except IntegrityError:
            await conn.execute(
                update(maintenance_cursors).where(maintenance_cursors.c.job == job).values(**values)
            )
