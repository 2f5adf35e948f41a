"""The subject_keys table: one row per data subject, its wrapped secret, or its tombstone.

Rows are never deleted: a shredded subject keeps its row with the secret overwritten by NULL,
so a later encryption for it is refused instead of given a new secret, and its ciphertexts'
key id still resolves (to "erased" rather than "unknown"). Every write is one conditional
statement, so replicas racing on one subject converge: a first encryption inserts with ON
CONFLICT DO NOTHING and then reads whichever row won, and a shred clears the secret only
where it is still set.

The two reads every Encrypt and Decrypt with subjects makes (by subject, by key id) are direct
reads on Postgres (palisade.common.direct_reads): one autocommit round trip with the whole
batch's names in one array parameter, no pool checkout, ping or rollback around it. Through the
engine they cost about 1 ms of crypto's CPU per batch, more than the rest of a Decrypt.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    any_,
    bindparam,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.common.db import UTCDateTime
from palisade.common.direct_reads import DirectReads, Row
from palisade.crypto.subjects import MAX_SUBJECT_CHARS, ShredOutcome, SubjectRecord

metadata = MetaData()
subject_keys = Table(
    "subject_keys",
    metadata,
    Column("subject", String(MAX_SUBJECT_CHARS), primary_key=True),
    Column("key_id", LargeBinary(16), nullable=False, unique=True),
    # A format 1 envelope of the secret under a key derived from data key `wrap_version`.
    Column("wrapped_secret", LargeBinary(), nullable=True),
    Column("wrap_version", Integer, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("shredded_at", UTCDateTime(), nullable=True),
    CheckConstraint(
        "(wrapped_secret IS NULL) = (shredded_at IS NOT NULL)"
        " AND (wrapped_secret IS NULL) = (wrap_version IS NULL)",
        name="subject_keys_secret_or_tombstone",
    ),
)

_COLUMNS = (
    subject_keys.c.subject,
    subject_keys.c.key_id,
    subject_keys.c.wrapped_secret,
    subject_keys.c.wrap_version,
    subject_keys.c.created_at,
    subject_keys.c.shredded_at,
)
_LIVE = subject_keys.c.shredded_at.is_(None)


# Postgres: the batch's names as one array parameter (a direct read takes named parameters
# only, and one statement text for every batch size is prepared once per connection).
_BY_SUBJECTS = select(*_COLUMNS).where(
    subject_keys.c.subject
    == any_(bindparam("subjects", type_=postgresql.ARRAY(String(MAX_SUBJECT_CHARS))))
)
_BY_KEY_IDS = select(*_COLUMNS).where(
    subject_keys.c.key_id == any_(bindparam("key_ids", type_=postgresql.ARRAY(LargeBinary())))
)


def _record(row: Row) -> SubjectRecord:  # a row of _COLUMNS, in that order
    subject, key_id, wrapped_secret, wrap_version, created_at, shredded_at = row
    return SubjectRecord(
        subject=subject,
        key_id=bytes(key_id),
        wrapped_secret=None if wrapped_secret is None else bytes(wrapped_secret),
        wrap_version=wrap_version,
        created_at=created_at,
        shredded_at=shredded_at,
    )


class DatabaseSubjectStore:
    def __init__(self, *, engine: AsyncEngine, reads: DirectReads | None = None) -> None:
        """reads: direct reads on the engine's database (Postgres only; without them, and on
        SQLite, the reads go through the engine)."""
        self._engine = engine
        postgres = engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if postgres else sqlite.insert
        self._reads = reads if postgres else None

    async def by_subjects(self, subjects: list[str]) -> dict[str, SubjectRecord]:
        if not subjects:
            return {}
        if self._reads is not None:
            rows = await self._reads.all(_BY_SUBJECTS, {"subjects": subjects})
        else:
            rows = await self._engine_rows(subject_keys.c.subject.in_(subjects))
        return {record.subject: record for record in map(_record, rows)}

    async def by_key_ids(self, key_ids: list[bytes]) -> dict[bytes, SubjectRecord]:
        if not key_ids:
            return {}
        if self._reads is not None:
            rows = await self._reads.all(_BY_KEY_IDS, {"key_ids": key_ids})
        else:
            rows = await self._engine_rows(subject_keys.c.key_id.in_(key_ids))
        return {record.key_id: record for record in map(_record, rows)}

    async def _engine_rows(self, condition: Any) -> list[Row]:
        async with self._engine.connect() as conn:
            return [tuple(row) for row in await conn.execute(select(*_COLUMNS).where(condition))]

    async def insert_new(self, records: list[SubjectRecord]) -> None:
        if not records:
            return
        # Without a conflict target: neither a subject that got a row meanwhile nor (however
        # unlikely) a key id already taken may fail the batch; the caller reads the winners.
        insert = (
            self._insert(subject_keys)
            .values(
                [
                    {
                        "subject": r.subject,
                        "key_id": r.key_id,
                        "wrapped_secret": r.wrapped_secret,
                        "wrap_version": r.wrap_version,
                        "created_at": r.created_at,
                        "shredded_at": None,
                    }
                    for r in records
                ]
            )
            .on_conflict_do_nothing()
        )
        async with self._engine.begin() as conn:
            await conn.execute(insert)

    async def rewrap(self, key_id: bytes, wrapped_secret: bytes, wrap_version: int) -> bool:
        # Never on a tombstone: a rewrap racing a shred must not bring the secret back.
        statement = (
            update(subject_keys)
            .where(
                subject_keys.c.key_id == key_id,
                _LIVE,
                subject_keys.c.wrap_version < wrap_version,
            )
            .values(wrapped_secret=wrapped_secret, wrap_version=wrap_version)
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(statement)).rowcount == 1

    async def shred(self, subject: str, tombstone_key_id: bytes, now: datetime) -> ShredOutcome:
        async with self._engine.begin() as conn:
            # Postgres (READ COMMITTED): an INSERT that found a row a concurrent first
            # encryption had not yet committed does nothing, and the next UPDATE, a new
            # statement, sees that row and clears it. SQLite's BEGIN IMMEDIATE serialises the
            # whole transaction, so there the first round decides.
            for _ in range(3):
                cleared = await self._clear(conn, subject, now)
                if cleared is not None:
                    return ShredOutcome(True, cleared)
                inserted = await self._tombstone(conn, subject, tombstone_key_id, now)
                if inserted:
                    return ShredOutcome(True, tombstone_key_id)
                row = (
                    await conn.execute(
                        select(subject_keys.c.key_id, subject_keys.c.shredded_at).where(
                            subject_keys.c.subject == subject
                        )
                    )
                ).first()
                if row is not None and row.shredded_at is not None:
                    return ShredOutcome(False, bytes(row.key_id))
        raise RuntimeError("subject row neither shredded nor present after three rounds")

    async def _clear(self, conn: AsyncConnection, subject: str, now: datetime) -> bytes | None:
        statement = (
            update(subject_keys)
            .where(subject_keys.c.subject == subject, _LIVE)
            .values(wrapped_secret=None, wrap_version=None, shredded_at=now)
            .returning(subject_keys.c.key_id)
        )
        key_id = (await conn.execute(statement)).scalar_one_or_none()
        return None if key_id is None else bytes(key_id)

    async def _tombstone(
        self, conn: AsyncConnection, subject: str, key_id: bytes, now: datetime
    ) -> bool:
        statement = (
            self._insert(subject_keys)
            .values(
                subject=subject,
                key_id=key_id,
                wrapped_secret=None,
                wrap_version=None,
                created_at=now,
                shredded_at=now,
            )
            .on_conflict_do_nothing()
            .returning(subject_keys.c.key_id)
        )
        return (await conn.execute(statement)).first() is not None

    async def wrapped_below(self, version: int, *, after: str, limit: int) -> list[SubjectRecord]:
        query = (
            select(*_COLUMNS)
            .where(_LIVE, subject_keys.c.wrap_version < version, subject_keys.c.subject > after)
            .order_by(subject_keys.c.subject)
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(tuple(r)) for r in rows]
