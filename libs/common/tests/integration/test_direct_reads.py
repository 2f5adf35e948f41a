"""Direct reads (palisade.common.direct_reads) on a real Postgres: what is retried and what is
not, and statements the driver path cannot run faithfully are refused up front (issue 10
review findings)."""

from __future__ import annotations

from datetime import datetime

import psycopg
import pytest
from sqlalchemy import bindparam, column, func, literal_column, select, text
from sqlalchemy.engine import make_url

from palisade.common.db import create_engine
from palisade.common.direct_reads import DirectReads

pytestmark = pytest.mark.postgres

PID = select(func.pg_backend_pid().label("pid"), bindparam("tag").label("tag"))
SLOW = select(literal_column("1").label("one")).where(
    func.pg_sleep(bindparam("seconds")).is_not(None)
)


@pytest.fixture
async def reads(postgres_url: str):
    engine = create_engine(postgres_url)
    reads = DirectReads.open(engine, pool_size=4)
    try:
        yield reads
    finally:
        await reads.close()
        await engine.dispose()


def _admin(postgres_url: str) -> tuple[str, str]:
    url = make_url(postgres_url)
    return url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    ), str(url.database)


async def test_a_dropped_pooled_connection_is_retried_on_a_fresh_one(reads, postgres_url) -> None:
    first = await reads.one(PID, {"tag": "a"})
    assert first is not None
    admin, database = _admin(postgres_url)
    with psycopg.connect(admin, autocommit=True) as conn:  # a restart, as the client sees it
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
    again = await reads.one(PID, {"tag": "b"})
    assert again is not None
    assert again[1] == "b"
    assert again[0] != first[0]  # a new backend


async def test_a_statement_refused_on_a_live_connection_is_not_repeated(reads, postgres_url):
    """A statement timeout is an OperationalError too, but the connection is fine: no second
    attempt (it would double the wait) and the idle connections stay."""
    await reads.one(PID, {"tag": "warm"})
    admin, database = _admin(postgres_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" SET statement_timeout = 200')
    await reads.close()  # connections made from here on pick the setting up
    reads._pool._closed = False
    await reads.one(PID, {"tag": "fresh"})  # one idle connection with the timeout
    executions: list[str] = []
    original = reads._fetch

    async def counting(sql, params, first_only):
        executions.append(sql)
        return await original(sql, params, first_only)

    reads._fetch = counting
    with pytest.raises(psycopg.errors.QueryCanceled):
        await reads.one(SLOW, {"seconds": 5})
    assert len(executions) == 1


async def test_statements_with_literals_or_expanding_parameters_are_refused(reads) -> None:
    with pytest.raises(ValueError, match="named parameters only"):
        await reads.one(select(column("x")).select_from(text("(SELECT 1 AS x) t")).limit(5), {})
    expanding = select(literal_column("1")).where(
        literal_column("1").in_(bindparam("values", expanding=True))
    )
    with pytest.raises(ValueError, match="named parameters only"):
        await reads.all(expanding, {"values": [1, 2]})


async def test_naive_datetimes_are_refused(reads) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        await reads.one(PID, {"tag": datetime(2026, 1, 1)})
