"""Per-service Alembic migrations, applied programmatically on an async engine.

Each service keeps its revisions in a `migrations` package whose env.py is just

    from palisade.common.migrations import run_env
    run_env()

and applies them at start-up (migrate_on_start) or with its `migrate` command.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

_CONNECTION_ATTR = "palisade_connection"


def _config(migrations_package: str, connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files(migrations_package)))
    config.attributes[_CONNECTION_ATTR] = connection
    return config


async def upgrade(engine: AsyncEngine, migrations_package: str, revision: str = "head") -> None:
    """Brings the service's database to revision (default: the newest)."""

    def _run(connection: Connection) -> None:
        command.upgrade(_config(migrations_package, connection), revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)


@asynccontextmanager
async def service_database(
    database_url: str | None,
    *,
    data_dir: Path,
    service: str,
    migrations_package: str | None = None,
) -> AsyncIterator[AsyncEngine]:
    """An operator command's engine on the service's database (the embedded default's SQLite
    file when database_url is unset), brought to head first when migrations_package is given,
    and disposed of when the block ends."""
    from palisade.common.db import create_engine, resolve_database_url

    engine = create_engine(resolve_database_url(database_url, data_dir=data_dir, service=service))
    try:
        if migrations_package is not None:
            await upgrade(engine, migrations_package)
        yield engine
    finally:
        await engine.dispose()


def run_env() -> None:
    """The body of every service's migrations/env.py (online mode only, on our connection)."""
    connection = context.config.attributes[_CONNECTION_ATTR]
    context.configure(connection=connection, target_metadata=None, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
