"""Migration 0001 creates exactly the tables, columns and indexes palisade.webhooks.tables
declares."""

from __future__ import annotations

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from palisade.common.db import create_engine
from palisade.common.migrations import upgrade
from palisade.webhooks.tables import MIGRATIONS_PACKAGE, metadata


async def test_the_migrated_schema_matches_the_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE, "0001")

        def shape(conn: Connection) -> dict[str, tuple[set[str], set[str], set[str]]]:
            inspector = inspect(conn)
            return {
                name: (
                    {c["name"] for c in inspector.get_columns(name)},
                    {str(i["name"]) for i in inspector.get_indexes(name)},
                    {str(u["name"]) for u in inspector.get_unique_constraints(name)},
                )
                for name in metadata.tables
            }

        async with engine.connect() as conn:
            found = await conn.run_sync(shape)
        for table in metadata.tables.values():
            columns, indexes, uniques = found[table.name]
            assert columns == set(table.c.keys()), table.name
            # Postgres also lists a unique constraint's own index.
            assert indexes - uniques == {str(i.name) for i in table.indexes}, table.name
            declared = {str(c.name) for c in table.constraints if c.name and "uq_" in c.name}
            assert declared <= uniques, table.name
    finally:
        await engine.dispose()
