"""Chats and messages, with full-text search over message bodies.

Postgres: `messages.body_tsv`, a stored generated tsvector (to_tsvector('english', body): the
two-argument form, which is immutable), and a GIN index on it. SQLite: the FTS5 table
`messages_fts` over `messages` (external content, so bodies are stored once; tokenizer
`porter unicode61`, which stems as Postgres's english configuration does for the usual
suffixes), kept in step by triggers, so every write to `messages` updates it in the same
transaction whoever makes it.

A later migration that alters `messages` on SQLite through a batch operation recreates the
table and with it drops these triggers: such a migration must create them again
(create_sqlite_fts_triggers below). tests/integration/test_chats_migration.py checks that head
has them.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from palisade.common.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQLITE_FTS_TRIGGERS = ("messages_fts_insert", "messages_fts_delete", "messages_fts_update")


def create_sqlite_fts_triggers() -> None:
    op.execute(
        "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN "
        "INSERT INTO messages_fts(rowid, body) VALUES (new.seq, new.body); END"
    )
    op.execute(
        "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN "
        "INSERT INTO messages_fts(messages_fts, rowid, body) "
        "VALUES ('delete', old.seq, old.body); END"
    )
    op.execute(
        "CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN "
        "INSERT INTO messages_fts(messages_fts, rowid, body) "
        "VALUES ('delete', old.seq, old.body); "
        "INSERT INTO messages_fts(rowid, body) VALUES (new.seq, new.body); END"
    )


def upgrade() -> None:
    ts = UTCDateTime()
    postgres = op.get_bind().dialect.name == "postgresql"
    op.create_table(
        "chats",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("visitor_id", sa.String(36), sa.ForeignKey("visitors.id"), nullable=False),
        sa.Column("test", sa.Boolean, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("message_count", sa.Integer, nullable=False),
    )
    op.create_index("ix_chats_visitor", "chats", ["visitor_id"])
    search: list[sa.Column[object]] = []
    if postgres:
        search.append(
            sa.Column(
                "body_tsv",
                postgresql.TSVECTOR,
                sa.Computed("to_tsvector('english', body)", persisted=True),
                nullable=False,
            )
        )
    op.create_table(
        "messages",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("chat_id", sa.String(36), sa.ForeignKey("chats.id"), nullable=False),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("test", sa.Boolean, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("sender", sa.String(8), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        *search,
        # Rowids never reused on SQLite: the FTS5 index is keyed by them.
        sqlite_autoincrement=True,
    )
    op.create_index("ux_messages_chat_position", "messages", ["chat_id", "position"], unique=True)
    if postgres:
        op.create_index("ix_messages_body_tsv", "messages", ["body_tsv"], postgresql_using="gin")
    else:
        op.execute(
            "CREATE VIRTUAL TABLE messages_fts USING fts5(body, content='messages', "
            "content_rowid='seq', tokenize='porter unicode61')"
        )
        create_sqlite_fts_triggers()


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        for trigger in SQLITE_FTS_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS messages_fts")
    op.drop_table("messages")
    op.drop_table("chats")
