"""AuthStore.run() on real Postgres: a unit of work the database rolls back to break a deadlock
runs again from the start in a new transaction (nothing of the first try is kept), at most
TRANSACTION_ATTEMPTS times; the last conflict propagates, recognised as a conflict (which the
RPC layer answers ABORTED transaction_conflict, not 503). SQLite runs one writer at a time
(BEGIN IMMEDIATE) and cannot deadlock, so this is Postgres only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import DBAPIError

from palisade.auth.store import AuthStore, AuthTransaction
from palisade.common.db import create_engine, transaction_conflict

pytestmark = [pytest.mark.postgres]

probe_metadata = MetaData()
probe = Table(
    "retry_probe",
    probe_metadata,
    Column("id", String(8), primary_key=True),
    Column("n", Integer, nullable=False),
)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[AuthStore]:
    engine = create_engine(postgres_url)
    async with engine.begin() as conn:
        await conn.run_sync(probe_metadata.create_all)
        await conn.execute(insert(probe), [{"id": "a", "n": 0}, {"id": "b", "n": 0}])
    yield AuthStore(engine=engine)
    await engine.dispose()


class _Crossing:
    """Two units of work that lock the probe rows in opposite orders: on their first tries
    each waits until the other holds its first row, which is a deadlock by construction."""

    def __init__(self) -> None:
        self.holding = (asyncio.Event(), asyncio.Event())
        self.tries = [0, 0]

    def unit(self, me: int) -> Callable[[AuthTransaction], Awaitable[None]]:
        mine, other = ("a", "b") if me == 0 else ("b", "a")

        async def work(tx: AuthTransaction) -> None:
            self.tries[me] += 1
            await _bump(tx, mine)
            if self.tries[me] == 1:
                self.holding[me].set()
                await self.holding[1 - me].wait()
            await _bump(tx, other)

        return work


async def _bump(tx: AuthTransaction, row: str) -> None:
    await tx.conn.execute(update(probe).where(probe.c.id == row).values(n=probe.c.n + 1))


async def _counts(store: AuthStore) -> dict[str, int]:
    async with store.transaction() as tx:
        rows = await tx.conn.execute(select(probe.c.id, probe.c.n))
        return {r.id: r.n for r in rows}


async def test_a_deadlocked_unit_of_work_runs_again_and_both_commit(store: AuthStore) -> None:
    crossing = _Crossing()
    await asyncio.gather(store.run(crossing.unit(0)), store.run(crossing.unit(1)))
    assert sorted(crossing.tries) == [1, 2]  # Postgres picked one victim; it ran again
    # Each unit bumped each row exactly once: the victim's rolled-back first try left nothing.
    assert await _counts(store) == {"a": 2, "b": 2}


async def test_the_last_conflict_propagates_as_a_conflict(store: AuthStore) -> None:
    crossing = _Crossing()
    outcomes = await asyncio.gather(
        store.run(crossing.unit(0), attempts=1),
        store.run(crossing.unit(1), attempts=1),
        return_exceptions=True,
    )
    [failure] = [o for o in outcomes if isinstance(o, BaseException)]
    assert isinstance(failure, DBAPIError)
    assert transaction_conflict(failure)
    assert crossing.tries == [1, 1]  # no second try with attempts=1
    assert await _counts(store) == {"a": 1, "b": 1}  # only the survivor's bumps


def test_other_errors_are_no_conflict() -> None:
    assert not transaction_conflict(ValueError("no"))
    assert not transaction_conflict(DBAPIError("SELECT 1", None, ValueError("no")))
