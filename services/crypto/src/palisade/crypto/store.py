"""Persistence of per-version encryption counts (never keys): a Protocol and its stores."""

from __future__ import annotations

from collections.abc import Mapping
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
    """Counts of encryptions per data-key version, summed over every replica."""

    async def add(self, deltas: Mapping[int, int]) -> None:
        """Adds each delta to its version's count atomically (replicas add concurrently)."""
        ...

    async def totals(self) -> dict[int, int]:
        """The count of every version seen so far."""
        ...


class DatabaseUsageStore:
    def __init__(self, *, engine: AsyncEngine) -> None:
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    async def add(self, deltas: Mapping[int, int]) -> None:
        rows = [{"key_version": v, "encryptions": n} for v, n in sorted(deltas.items()) if n]
        if not rows:
            return
        stmt = self._insert(key_usage).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=[key_usage.c.key_version],
            set_={"encryptions": key_usage.c.encryptions + stmt.excluded.encryptions},
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt)

    async def totals(self) -> dict[int, int]:
        async with self._engine.connect() as conn:
            result = await conn.execute(select(key_usage.c.key_version, key_usage.c.encryptions))
            return {int(v): int(n) for v, n in result}


class MemoryUsageStore:
    """In-process store for unit tests."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}

    async def add(self, deltas: Mapping[int, int]) -> None:
        for version, n in deltas.items():
            if not n:
                continue
            self._counts[version] = self._counts.get(version, 0) + n

    async def totals(self) -> dict[int, int]:
        return dict(self._counts)
