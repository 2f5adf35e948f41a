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


async def test_leases_accumulate_per_version_and_return_the_new_total(store) -> None:
    assert await store.lease(1, 5) == 5
    assert await store.lease(2, 1) == 1
    assert await store.lease(1, 3) == 8
    assert await store.totals() == {1: 8, 2: 1}


async def test_large_counts_fit(store) -> None:
    await store.lease(1, 3 * 2**30)
    assert await store.lease(1, 3 * 2**30) == 6 * 2**30
    assert await store.totals() == {1: 6 * 2**30}


async def test_concurrent_replicas_never_lose_a_lease(database_url: str, engine) -> None:
    # Two engines stand for two replicas leasing from one database at the same time.
    other = create_engine(database_url)
    try:
        stores = [DatabaseUsageStore(engine=engine), DatabaseUsageStore(engine=other)]
        returned = await asyncio.gather(*(stores[i % 2].lease(1, 1) for i in range(40)))
        assert sorted(returned) == list(range(1, 41))  # every lease saw a distinct total
        assert await stores[0].totals() == {1: 40}
    finally:
        await other.dispose()
