"""Migration 0002: the chats tables as palisade.visitors.chats.tables declares them, plus each
backend's full-text index, and a downgrade that takes all of it away again."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from palisade.common.db import create_engine
from palisade.common.migrations import upgrade
from palisade.visitors.chats.tables import chats, messages
from palisade.visitors.tables import MIGRATIONS_PACKAGE

SQLITE_TRIGGERS = {"messages_fts_insert", "messages_fts_delete", "messages_fts_update"}


def _schema(conn: Connection) -> dict[str, object]:
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    found: dict[str, object] = {"tables": tables}
    for name in ("chats", "messages"):
        if name in tables:
            found[name] = {c["name"] for c in inspector.get_columns(name)}
            found[f"{name}_indexes"] = {str(i["name"]) for i in inspector.get_indexes(name)}
    return found


async def test_head_has_the_tables_and_the_full_text_index(database_url: str) -> None:
    engine = create_engine(database_url)
    postgres = engine.dialect.name == "postgresql"
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)
        async with engine.connect() as conn:
            schema = await conn.run_sync(_schema)
            if postgres:
                gin = (
                    await conn.execute(
                        text(
                            "SELECT indexdef FROM pg_indexes "
                            "WHERE indexname = 'ix_messages_body_tsv'"
                        )
                    )
                ).scalar_one()
                generated = (
                    await conn.execute(
                        text(
                            "SELECT generation_expression FROM information_schema.columns "
                            "WHERE table_name = 'messages' AND column_name = 'body_tsv'"
                        )
                    )
                ).scalar_one()
            else:
                triggers = {
                    r[0]
                    for r in await conn.execute(
                        text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                    )
                }
                fts_sql = (
                    await conn.execute(
                        text("SELECT sql FROM sqlite_master WHERE name = 'messages_fts'")
                    )
                ).scalar_one()
        assert schema["chats"] == set(chats.c.keys())
        extra = {"body_tsv"} if postgres else set()
        assert schema["messages"] == set(messages.c.keys()) | extra
        assert schema["chats_indexes"] >= {"ix_chats_visitor"}
        assert "ux_messages_chat_position" in schema["messages_indexes"]  # type: ignore[operator]
        if postgres:
            assert "USING gin (body_tsv)" in gin
            assert "to_tsvector('english'::regconfig, body)" in generated
        else:
            assert triggers >= SQLITE_TRIGGERS
            assert "porter unicode61" in fts_sql
            assert "content='messages'" in fts_sql
    finally:
        await engine.dispose()


async def test_the_sqlite_index_follows_every_write_to_messages(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    now = datetime(2026, 5, 1, tzinfo=UTC).replace(tzinfo=None)
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO visitors (id, workspace_id, test, created_at) "
                    "VALUES ('vis_1', 'ws_1', 0, :now)"
                ),
                {"now": now},
            )
            await conn.execute(
                text(
                    "INSERT INTO chats (id, workspace_id, visitor_id, test, created_at, "
                    "message_count) VALUES ('cht_1', 'ws_1', 'vis_1', 0, :now, 0)"
                ),
                {"now": now},
            )
            for position, body in enumerate(("apples and pears", "running shoes", "pears"), 1):
                await conn.execute(
                    text(
                        "INSERT INTO messages (id, chat_id, workspace_id, test, position, sender, "
                        "body, created_at) VALUES (:id, 'cht_1', 'ws_1', 0, :p, 'agent', :b, :now)"
                    ),
                    {"id": f"msg_{secrets.token_hex(4)}", "p": position, "b": body, "now": now},
                )
            await conn.execute(text("UPDATE messages SET body = 'bananas' WHERE position = 3"))
            await conn.execute(text("DELETE FROM messages WHERE position = 1"))

        async def matches(word: str) -> list[str]:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT m.body FROM messages_fts JOIN messages m "
                        "ON m.seq = messages_fts.rowid WHERE messages_fts MATCH :q"
                    ),
                    {"q": f'"{word}"'},
                )
                return [r[0] for r in rows]

        assert await matches("pears") == []
        assert await matches("bananas") == ["bananas"]
        assert await matches("run") == ["running shoes"]
        async with engine.begin() as conn:
            # FTS5 compares its index with the content table and raises if they disagree.
            await conn.execute(
                text("INSERT INTO messages_fts(messages_fts) VALUES ('integrity-check')")
            )
    finally:
        await engine.dispose()


async def test_downgrade_to_0001_removes_chats_and_upgrade_restores_them(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)

        def downgrade(conn: Connection) -> None:
            from alembic import command

            from palisade.common.migrations import _config

            command.downgrade(_config(MIGRATIONS_PACKAGE, conn), "0001")

        async with engine.begin() as conn:
            await conn.run_sync(downgrade)
        async with engine.connect() as conn:
            tables = (await conn.run_sync(_schema))["tables"]
            if engine.dialect.name == "sqlite":
                leftovers = list(
                    await conn.execute(
                        text("SELECT name FROM sqlite_master WHERE name LIKE 'messages%'")
                    )
                )
                assert leftovers == []
        assert not {"chats", "messages", "messages_fts"} & tables  # type: ignore[operator]
        assert "visitors" in tables  # type: ignore[operator]
        await upgrade(engine, MIGRATIONS_PACKAGE)
        async with engine.connect() as conn:
            assert {"chats", "messages"} <= (await conn.run_sync(_schema))["tables"]  # type: ignore[operator]
    finally:
        await engine.dispose()
