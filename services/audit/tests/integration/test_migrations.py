"""The migrations create exactly the tables, columns and indexes palisade.audit.tables declares."""

from __future__ import annotations

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from palisade.audit.tables import MIGRATIONS_PACKAGE, metadata
from palisade.common.db import create_engine
from palisade.common.migrations import upgrade


async def test_the_migrated_schema_matches_the_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)

        def schema(conn: Connection) -> dict[str, tuple[set[str], set[str]]]:
            inspector = inspect(conn)
            return {
                name: (
                    {c["name"] for c in inspector.get_columns(name)},
                    {str(i["name"]) for i in inspector.get_indexes(name)},
                )
                for name in metadata.tables
            }

        async with engine.connect() as conn:
            found = await conn.run_sync(schema)
        for table in metadata.tables.values():
            columns, indexes = found[table.name]
            assert columns == set(table.c.keys()), table.name
            assert {str(i.name) for i in table.indexes} <= indexes, table.name
    finally:
        await engine.dispose()
