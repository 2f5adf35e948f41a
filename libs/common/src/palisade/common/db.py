"""Async database access: one engine per service, Postgres in production, SQLite embedded."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import psycopg
import psycopg.errors
from sqlalchemy import DateTime, event
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

from palisade.common.secret_files import ensure_private_dir


def resolve_database_url(database_url: str | None, *, data_dir: Path, service: str) -> str:
    """The configured URL, or a SQLite file <data_dir>/<service>.db for the embedded default.

    Plain postgresql:// URLs are pinned to the psycopg (v3) async driver.
    """
    if database_url:
        url = make_url(database_url)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        elif url.drivername == "sqlite":
            url = url.set(drivername="sqlite+aiosqlite")
        return url.render_as_string(hide_password=False)
    ensure_private_dir(data_dir)  # password hashes and sessions live in these files
    return f"sqlite+aiosqlite:///{(data_dir / f'{service}.db').resolve()}"


def _sqlite_pragmas(dbapi_connection: object, _record: ConnectionPoolEntry) -> None:
    # WAL lets readers proceed during a write; busy_timeout makes a second process wait for the
    # lock instead of failing at once; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    # Take transaction control from the driver, so that _sqlite_begin decides how to BEGIN.
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]


def _sqlite_begin(conn: Connection) -> None:
    # SQLite has no SELECT ... FOR UPDATE. BEGIN IMMEDIATE takes the write lock up front, so
    # read-decide-write transactions (token rotation, single-use secrets) are serialized
    # across processes, the same guarantee row locks give on Postgres.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int | None = None) -> AsyncEngine:
    """Creates the service's engine (for transactions) with settings that suit its backend.

    Connections are checked with a ping when taken from the pool: a transaction cannot be
    replayed from here once it failed halfway, so a connection the server dropped (a Postgres
    restart, an idle timeout in a proxy) must be found before the transaction starts. The hot
    single-statement reads skip the ping and retry instead (palisade.common.direct_reads).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def is_disconnect(error: BaseException) -> bool:
    """The statement failed because its connection was dead (the pool has been emptied)."""
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def database_unavailable(error: BaseException) -> bool:
    """The database could not be reached or dropped the connection, rather than refusing the
    statement: the caller should answer 503 (try again later), never 500. Covers both paths:
    SQLAlchemy's engine and the driver's own connections (palisade.common.direct_reads)."""
    return is_disconnect(error) or isinstance(
        error,
        OperationalError
        | InterfaceError
        | PoolTimeoutError
        | psycopg.OperationalError
        | psycopg.InterfaceError,
    )


def transaction_conflict(error: BaseException) -> bool:
    """Postgres rolled the transaction back to break a lock cycle (deadlock detected) or to
    keep a serialisable order (serialization failure): nothing it did was written, and the
    same request made again may well succeed. Not an outage (database_unavailable() also
    matches these, being OperationalErrors), so check this first."""
    seen: BaseException | None = error
    for _ in range(4):  # the SQLAlchemy wrapper, the driver's error, what that was raised from
        if seen is None:
            return False
        if isinstance(seen, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
            return True
        seen = seen.orig if isinstance(seen, DBAPIError) else seen.__cause__
    return False


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    Postgres keeps the zone (timestamptz); SQLite has none, so values are stored as naive UTC
    and given their zone back when read. Naive datetimes are refused on the way in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
