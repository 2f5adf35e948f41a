"""The usage store contract, run against every backend (SQLite and real Postgres)."""

from __future__ import annotations

import asyncio

import pytest

from palisade.common.db import create_engine
from palisade.common.migrations import upgrade
from palisade.crypto.store import MIGRATIONS_PACKAGE, DatabaseUsageStore, MemoryUsageStore


@pytest.fixture
async def engine(database_url: str):
    engine = create_engine(database_url)
    await upgrade(engine, MIGRATIONS_PACKAGE)
    await upgrade(engine, MIGRATIONS_PACKAGE)  # applying twice is a no-op
    yield engine
    await engine.dispose()


@pytest.fixture(params=["memory", "database"])
def store(request, engine):
    if request.param == "memory":
        return MemoryUsageStore()
    return DatabaseUsageStore(engine=engine)


async def test_empty_store_has_no_totals(store) -> None:
    assert await store.totals() == {}


async def test_adds_accumulate_per_version(store) -> None:
    await store.add({1: 5, 2: 1})
    await store.add({1: 3})
    await store.add({})
    await store.add({3: 0})
    assert await store.totals() == {1: 8, 2: 1}


async def test_large_counts_fit(store) -> None:
    await store.add({1: 3 * 2**30})
    await store.add({1: 3 * 2**30})
    assert await store.totals() == {1: 6 * 2**30}


async def test_concurrent_replicas_never_lose_an_add(database_url: str, engine) -> None:
    # Two engines stand for two replicas adding to one database at the same time.
    other = create_engine(database_url)
    try:
        stores = [DatabaseUsageStore(engine=engine), DatabaseUsageStore(engine=other)]
        await asyncio.gather(*(stores[i % 2].add({1: 1, 2: 2}) for i in range(40)))
        assert await stores[0].totals() == {1: 40, 2: 80}
    finally:
        await other.dispose()
