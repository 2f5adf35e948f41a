"""Claiming an outbox's due rows with a lease (palisade.common.outbox_claims), on SQLite and
Postgres: order, leases that keep other claimers off and run out, and parallel claimers that
never take the same row."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.db import UTCDateTime, create_engine
from palisade.common.outbox_claims import LeasedOutbox, exponential_backoff

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)

metadata = MetaData()
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("rank", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("done_at", UTCDateTime(), nullable=True),
    Column("note", String(20), nullable=True),
)
OUTBOX = LeasedOutbox(
    jobs,
    columns=(jobs.c.rank, jobs.c.note),
    order_by=(jobs.c.rank, jobs.c.id),
    pending=jobs.c.done_at.is_(None),
    due_when_unset=True,
)


async def _engine(url: str) -> AsyncEngine:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine


@pytest.fixture
async def engine(database_url: str):
    engine = await _engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _add(engine: AsyncEngine, count: int, *, due: datetime | None = T0) -> list[str]:
    ids = [f"job_{n:04d}" for n in range(count)]
    async with engine.begin() as conn:
        await conn.execute(
            insert(jobs),
            # Ranks run backwards: the claim's order is the outbox's, not the ids'.
            [
                {"id": i, "rank": count - n, "attempts": 0, "next_attempt_at": due}
                for n, i in enumerate(ids)
            ],
        )
    return ids


async def test_due_rows_are_claimed_in_the_outbox_order_up_to_the_limit(engine) -> None:
    ids = await _add(engine, 5)
    first = await OUTBOX.claim(engine, now=T0, lease_end=T0 + LEASE, limit=3)
    assert [c.id for c in first.claims] == [ids[4], ids[3], ids[2]]
    assert [c.attempt for c in first.claims] == [1, 1, 1]
    assert [c.row.rank for c in first.claims] == [1, 2, 3]
    # The leased rows are not due any more: the next claim takes the rest.
    second = await OUTBOX.claim(engine, now=T0, lease_end=T0 + LEASE, limit=3)
    assert [c.id for c in second.claims] == [ids[1], ids[0]]
    assert (await OUTBOX.claim(engine, now=T0, lease_end=T0 + LEASE, limit=3)).claims == []


async def test_rows_not_yet_due_or_no_longer_pending_are_left_alone(engine) -> None:
    [later] = await _add(engine, 1, due=T0 + timedelta(seconds=5))
    async with engine.begin() as conn:
        await conn.execute(
            insert(jobs).values(id="never_tried", rank=9, attempts=0, next_attempt_at=None)
        )
        await conn.execute(
            insert(jobs).values(id="done", rank=0, attempts=1, next_attempt_at=T0, done_at=T0)
        )
    claimed = await OUTBOX.claim(engine, now=T0, lease_end=T0 + LEASE, limit=10)
    assert [c.id for c in claimed.claims] == ["never_tried"]  # NULL: due at once
    claimed = await OUTBOX.claim(engine, now=T0 + timedelta(seconds=5), lease_end=T0, limit=10)
    assert [c.id for c in claimed.claims] == [later]


async def test_an_expired_lease_makes_the_row_claimable_again(engine) -> None:
    [job] = await _add(engine, 1)
    [first] = (await OUTBOX.claim(engine, now=T0, lease_end=T0 + LEASE, limit=1)).claims
    during = T0 + LEASE - timedelta(seconds=1)
    assert (await OUTBOX.claim(engine, now=during, lease_end=during + LEASE, limit=1)).claims == []
    after = T0 + LEASE
    [second] = (await OUTBOX.claim(engine, now=after, lease_end=after + LEASE, limit=1)).claims
    assert (second.id, second.attempt) == (job, 2)
    async with engine.begin() as conn:
        # The first claimer, late, no longer holds the row: its outcome does not count.
        stale = await conn.execute(
            update(jobs).where(OUTBOX.held(first.id, first.attempt)).values(note="stale")
        )
        current = await conn.execute(
            update(jobs).where(OUTBOX.held(second.id, second.attempt)).values(note="current")
        )
    assert (stale.rowcount, current.rowcount) == (0, 1)


async def test_rows_given_up_are_settled_in_the_claim_instead_of_leased(engine) -> None:
    ids = await _add(engine, 3)
    async with engine.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == ids[1]).values(attempts=5))
    claimed = await OUTBOX.claim(
        engine,
        now=T0,
        lease_end=T0 + LEASE,
        limit=10,
        give_up=lambda row: row.attempts >= 5,
        give_up_values={"done_at": T0, "note": "given up"},
    )
    assert [c.id for c in claimed.claims] == [ids[2], ids[0]]
    assert claimed.given_up == [ids[1]]
    async with engine.connect() as conn:
        row = (await conn.execute(select(jobs).where(jobs.c.id == ids[1]))).one()
    assert (row.attempts, row.note, row.done_at) == (5, "given up", T0)


async def test_parallel_claimers_on_two_engines_never_take_the_same_row(database_url) -> None:
    engines = [await _engine(database_url), await _engine(database_url)]
    try:
        ids = await _add(engines[0], 120)
        taken: list[str] = []

        async def claimer(engine: AsyncEngine) -> None:
            while True:
                batch = await OUTBOX.claim(engine, now=T0, lease_end=T0 + LEASE, limit=7)
                if not batch.claims:
                    return
                taken.extend(c.id for c in batch.claims)

        await asyncio.gather(*(claimer(e) for e in engines for _ in range(3)))
        assert sorted(taken) == ids  # every row once, none twice
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.mark.postgres
async def test_postgres_skips_a_row_another_claim_has_locked_without_waiting(
    postgres_url,
) -> None:
    engine = await _engine(postgres_url)
    try:
        ids = await _add(engine, 3)
        async with engine.connect() as other:
            # Another replica, mid-claim: it has read (and locked) the first due row.
            await other.execute(
                text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": ids[2]}
            )
            async with asyncio.timeout(5):  # FOR UPDATE without SKIP LOCKED would wait here
                claimed = await OUTBOX.claim(engine, now=T0, lease_end=T0 + LEASE, limit=10)
            await other.rollback()
        assert [c.id for c in claimed.claims] == [ids[1], ids[0]]
    finally:
        await engine.dispose()


def test_exponential_backoff_doubles_from_the_first_wait_up_to_the_cap() -> None:
    waits = [exponential_backoff(n, first_seconds=30, max_seconds=3600) for n in range(0, 10)]
    assert [w.total_seconds() for w in waits] == [30, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert exponential_backoff(10**6, first_seconds=1, max_seconds=60) == timedelta(seconds=60)
