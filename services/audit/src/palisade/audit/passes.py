"""Background passes that one replica at a time should make (checkpoint signing, purging)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


async def one_replica_at_a_time(
    engine: AsyncEngine, lock_key: int, work: Callable[[], Awaitable[object]]
) -> bool:
    """Runs work unless another replica is running it (a Postgres session advisory lock, held
    on a connection of its own across work's transactions and released when it ends or the
    connection dies). SQLite serves one process: work just runs. Returns whether it ran."""
    if engine.dialect.name != "postgresql":
        await work()
        return True
    async with engine.connect() as conn:
        key = {"k": lock_key}
        taken = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), key)).scalar()
        await conn.commit()
        if not taken:
            return False
        try:
            await work()
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), key)
            await conn.commit()
    return True
