"""Persistence of per-version encryption counts (never keys): a Protocol and its stores."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

# Alembic revisions of this database (see palisade.common.migrations).
MIGRATIONS_PACKAGE = "palisade.crypto.migrations"

metadata = MetaData()

key_usage = Table(
    "key_usage",
    metadata,
    Column("key_version", Integer, primary_key=True, autoincrement=False),
    Column("encryptions", BigInteger, nullable=False),
)


class UsageStore(Protocol):
    """The ledger of encryptions per data-key version, shared by every replica."""

    async def lease(self, version: int, count: int) -> int:
        """Atomically adds count to version's total; returns the new total."""
        ...

    async def totals(self) -> dict[int, int]:
        """The total of every version leased so far."""
        ...


class DatabaseUsageStore:
    def __init__(self, *, engine: AsyncEngine) -> None:
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def lease(self, version: int, count: int) -> int:
        insert = self._insert(key_usage).values(key_version=version, encryptions=count)
        upsert = insert.on_conflict_do_update(
            index_elements=[key_usage.c.key_version],
            set_={"encryptions": key_usage.c.encryptions + insert.excluded.encryptions},
        ).returning(key_usage.c.encryptions)
        async with self._engine.begin() as conn:
            return int((await conn.execute(upsert)).scalar_one())

    async def totals(self) -> dict[int, int]:
        async with self._engine.connect() as conn:
            result = await conn.execute(select(key_usage.c.key_version, key_usage.c.encryptions))
            return {int(v): int(n) for v, n in result}


class MemoryUsageStore:
    """In-process ledger for unit tests."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}

    async def lease(self, version: int, count: int) -> int:
        self._counts[version] = self._counts.get(version, 0) + count
        return self._counts[version]

    async def totals(self) -> dict[int, int]:
        return dict(self._counts)
