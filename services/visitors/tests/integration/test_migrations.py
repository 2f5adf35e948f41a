"""The migrations (0001, and 0003's visitors.source) create exactly the tables and columns
palisade.visitors.tables declares."""

from __future__ import annotations

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from palisade.common.db import create_engine
from palisade.common.migrations import upgrade
from palisade.visitors.tables import MIGRATIONS_PACKAGE, maintenance_cursors, outbox_events
from palisade.visitors.tables import visitors as visitors_table


async def test_the_migrated_schema_matches_the_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)

        def columns(conn: Connection) -> dict[str, set[str]]:
            inspector = inspect(conn)
            return {
                name: {c["name"] for c in inspector.get_columns(name)}
                for name in ("visitors", "maintenance_cursors", "outbox_events")
            }

        def indexes(conn: Connection) -> set[str]:
            return {str(i["name"]) for i in inspect(conn).get_indexes("visitors")}

        async with engine.connect() as conn:
            found = await conn.run_sync(columns)
            found_indexes = await conn.run_sync(indexes)
        for table in (visitors_table, maintenance_cursors, outbox_events):
            assert found[table.name] == set(table.c.keys()), table.name
        assert found_indexes == {str(i.name) for i in visitors_table.indexes}
    finally:
        await engine.dispose()
