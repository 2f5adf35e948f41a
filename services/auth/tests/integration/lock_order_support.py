"""Watching row locks on real Postgres, for the lock-order tests (test_lock_order_*.py).

A test holds a lock in a transaction of its own (the "blocker": what a password change, a
disable or a sign-in does first), starts the path under test, and waits until Postgres says
that path's backend is waiting for the blocker (pg_blocking_pids: no sleeping for a guess).
While it waits, row_is_free() asks, from a third connection and with NOWAIT, whether a row the
path must not have touched yet is still unlocked. Then the blocker carries on (often with the
statement that would close a cycle) and commits, and the test checks how the path ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from palisade.auth.sessions.store import SessionRecords
from palisade.auth.store import AuthTransaction
from palisade.common.db import create_engine

# How long a probe waits for the path under test to reach its lock wait: generous, since it
# only bounds a failure (the path finished without waiting, or hangs somewhere else).
REACH_SECONDS = 20.0
_POLL_SECONDS = 0.005
T = TypeVar("T")


def start(call: Awaitable[T]) -> asyncio.Task[T]:
    """Runs `call` (a coroutine or a gRPC call object) as a task of its own."""

    async def awaited() -> T:
        return await call

    return asyncio.create_task(awaited())


def libpq_url(sqlalchemy_url: str) -> str:
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def backend_pid(conn: AsyncConnection) -> int:
    """The Postgres backend of a (SQLAlchemy) connection: what pg_blocking_pids names."""
    return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def wait_until_blocked_by(database_url: str, blocker: int, path: asyncio.Task[Any]) -> int:
    """The pid of the backend that waits for a lock `blocker` holds, once there is one; fails if
    `path` (the task running the code under test) ends first, since then it never waited."""
    async with await psycopg.AsyncConnection.connect(
        libpq_url(database_url), autocommit=True
    ) as conn:
        async with asyncio.timeout(REACH_SECONDS):
            while True:
                row = await (
                    await conn.execute(
                        "SELECT pid FROM pg_stat_activity"
                        " WHERE %s = ANY(pg_blocking_pids(pid)) ORDER BY pid LIMIT 1",
                        (blocker,),
                    )
                ).fetchone()
                if row is not None:
                    return int(row[0])
                if path.done():
                    raise AssertionError(f"finished without waiting for the lock: {path!r}")
                await asyncio.sleep(_POLL_SECONDS)  # polls a condition; no timing is assumed


async def row_is_free(database_url: str, query: str, params: Sequence[object]) -> bool:
    """Whether `query` (a SELECT ... FOR UPDATE NOWAIT of the rows in question) gets its rows
    locked at once: False if another transaction holds any of them (it updated, deleted or
    locked them). Rolled back: the probe keeps nothing."""
    assert "NOWAIT" in query.upper()
    async with await psycopg.AsyncConnection.connect(libpq_url(database_url)) as conn:
        try:
            rows = await (await conn.execute(query, tuple(params))).fetchall()
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            await conn.rollback()
    assert rows, "the probe found no row: it checks nothing"
    return True


@asynccontextmanager
async def user_row_held(database_url: str, user_id: str, *, exclusive: bool) -> AsyncIterator[int]:
    """Holds the user row as auth's lock order takes it (SessionRecords.lock_user: shared, as a
    maker of sessions does, or exclusive, as whatever ends them does) in a transaction of its
    own, rolled back on leaving: nothing else of it is written. Yields its backend's pid."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            try:
                tx = AuthTransaction(conn)
                assert await SessionRecords(tx).lock_user(user_id, exclusive=exclusive)
                yield await backend_pid(conn)
            finally:
                await transaction.rollback()
    finally:
        await engine.dispose()
