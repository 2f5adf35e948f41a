"""The hottest reads, one SELECT each, straight on the database driver.

On Postgres these statements skip SQLAlchemy's connection pool and execution layer (and the
greenlet hop its asyncio adapter makes for every statement): they run on psycopg connections
of their own, in autocommit, one round trip each. Measured on one `GET /v1/me` read:
about 370 us of CPU through SQLAlchemy's engine, 160 us this way. Statements are still written
with SQLAlchemy Core (prebuilt once, with named bind parameters) and compiled to SQL once.

Rows come back as plain tuples in the statement's column order, with every datetime in UTC
(what the UTCDateTime column type gives on the engine path). Only for reads: each statement
commits on its own, and a read of several statements that must agree belongs in a transaction.
A connection the server dropped (a restart, a proxy's idle timeout) fails its first attempt; the
read then runs once more on a fresh connection. On SQLite (the embedded default) the same
statements run through the service's engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Select

# libpq's connect timeout (whole seconds): how long a read waits for the database to accept a
# new connection before the request answers 503.
CONNECT_TIMEOUT_SECONDS = 2
# Connections are replaced after this long, so none lives forever behind a proxy.
MAX_LIFETIME_SECONDS = 1800.0

Row = tuple[Any, ...]


def _utc(row: Row) -> Row:
    if not any(isinstance(value, datetime) for value in row):
        return row
    return tuple(value.astimezone(UTC) if isinstance(value, datetime) else value for value in row)


class StaleConnection(psycopg.OperationalError):
    """A reused connection turned out dead (the server restarted or dropped it while idle)."""


def _dropped(conn: psycopg.AsyncConnection[Any], error: psycopg.OperationalError) -> bool:
    """The connection is gone, as opposed to a statement refused on a live one (a statement
    timeout, a lock not available: not worth repeating)."""
    state = error.sqlstate
    return conn.broken or state is None or state.startswith("08") or state in _SHUTDOWN_STATES


# admin_shutdown, crash_shutdown, cannot_connect_now
_SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})


class _Connections:
    """A small pool of autocommit psycopg connections: at most max_size in use at once (more
    callers wait their turn), idle ones kept for reuse. Nothing runs in the background: a
    connection is opened when none is idle, so once the database is back after an outage the
    next read connects at once. A connection that failed, or was left mid-statement by a
    cancelled read, is closed instead of returned."""

    def __init__(self, conninfo: str, max_size: int) -> None:
        self._conninfo = conninfo
        self._slots = asyncio.Semaphore(max_size)
        self._idle: list[tuple[psycopg.AsyncConnection[Any], float]] = []
        self._closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], bool]]:
        """A connection, and whether it was reused (an idle one, which the server may have
        dropped meanwhile) rather than opened just now."""
        async with self._slots:
            conn, born, reused = await self._take()
            reusable = False
            try:
                yield conn, reused
                reusable = True
            finally:
                if (
                    reusable
                    and not self._closed
                    and not conn.broken
                    and conn.info.transaction_status == TransactionStatus.IDLE
                    and time.monotonic() - born < MAX_LIFETIME_SECONDS
                ):
                    self._idle.append((conn, born))
                else:
                    await conn.close()

    async def _take(self) -> tuple[psycopg.AsyncConnection[Any], float, bool]:
        while self._idle:
            conn, born = self._idle.pop()
            if not conn.closed:
                return conn, born, True
        conn = await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        return conn, time.monotonic(), False

    async def close(self) -> None:
        """Closes the idle connections now, and those in use when they come back."""
        self._closed = True
        await self.discard_idle()

    async def discard_idle(self) -> None:
        """After a dropped connection: the server likely dropped the idle ones too."""
        idle, self._idle = self._idle, []
        for conn, _ in idle:
            await conn.close()


class DirectReads:
    def __init__(self, engine: AsyncEngine, pool: _Connections | None) -> None:
        self._engine = engine
        self._pool = pool
        self._sql: dict[int, tuple[Select[Any], str]] = {}

    @classmethod
    def open(cls, engine: AsyncEngine, *, pool_size: int) -> DirectReads:
        """Reads for the engine's database (up to pool_size connections of their own on
        Postgres; the engine itself on SQLite). Connects lazily, on the first read."""
        url = engine.url
        if url.get_backend_name() != "postgresql":
            return cls(engine, None)
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return cls(engine, _Connections(conninfo, pool_size))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def one(self, statement: Select[Any], params: Mapping[str, Any]) -> Row | None:
        rows = await self._rows(statement, params, first_only=True)
        return rows[0] if rows else None

    async def all(self, statement: Select[Any], params: Mapping[str, Any]) -> list[Row]:
        return await self._rows(statement, params, first_only=False)

    async def _rows(
        self, statement: Select[Any], params: Mapping[str, Any], *, first_only: bool
    ) -> list[Row]:
        if self._pool is None:
            async with self._engine.connect() as conn:
                result = await conn.execute(statement, dict(params))
                found = [result.first()] if first_only else list(result)
            return [tuple(row) for row in found if row is not None]
        sql = self._compiled(statement)
        if any(isinstance(v, datetime) and v.tzinfo is None for v in params.values()):
            # What the UTCDateTime column type refuses on the engine path, refused here too:
            # the database would read a naive value in its own time zone.
            raise ValueError("naive datetime given to a direct read")
        try:
            return await self._fetch(sql, params, first_only)
        except StaleConnection:
            # The server dropped a pooled connection (a restart drops all of them, so the idle
            # ones go too): one more attempt on a fresh connection, as a SELECT is safe to
            # repeat. Only then: a statement refused on a live connection is not repeated,
            # and a database that refuses new connections fails at once (503).
            await self._pool.discard_idle()
            return await self._fetch(sql, params, first_only)

    async def _fetch(self, sql: str, params: Mapping[str, Any], first_only: bool) -> list[Row]:
        assert self._pool is not None
        async with self._pool.connection() as (conn, reused):
            try:
                cursor = await conn.execute(sql, params)
                if first_only:
                    row = await cursor.fetchone()
                    return [] if row is None else [_utc(row)]
                return [_utc(row) for row in await cursor.fetchall()]
            except psycopg.OperationalError as error:
                if reused and not isinstance(error, StaleConnection) and _dropped(conn, error):
                    raise StaleConnection(str(error)) from error
                raise

    def _compiled(self, statement: Select[Any]) -> str:
        # Keyed by identity, holding the statement so its id is never reused: these are
        # module-level constants, a handful per service.
        cached = self._sql.get(id(statement))
        if cached is None:
            compiled = statement.compile(dialect=self._engine.dialect)
            for name, bind in compiled.binds.items():
                # The driver gets the caller's parameters and nothing else: a literal (an
                # auto-named parameter with a value, e.g. `.limit(5)`) or an expanding IN
                # would be missing here while working on the engine path.
                if bind.expanding or bind.value is not None or bind.callable is not None:
                    raise ValueError(f"direct reads take named parameters only, not {name!r}")
            cached = self._sql[id(statement)] = (statement, str(compiled))
        return cached[1]
