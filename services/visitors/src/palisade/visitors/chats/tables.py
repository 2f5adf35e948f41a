"""The chats tables (migration 0002 creates exactly these columns, and the search indexes).

Message bodies are plaintext by design: full-text search reads them. On Postgres `messages`
also has `body_tsv`, a stored generated tsvector (to_tsvector('english', body)) with a GIN
index; on SQLite the FTS5 table `messages_fts` (external content, porter unicode61) is kept in
step with `messages` by triggers. Neither is declared here: the store's search statements name
them, and nothing else may select or write them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Table, Text

from palisade.visitors.tables import ID_CHARS, TS, WORKSPACE_CHARS, metadata

SENDER_CHARS = 8  # "visitor" | "agent"

chats = Table(
    "chats",
    metadata,
    Column("id", String(ID_CHARS), primary_key=True),  # cht_ + 32 hex
    Column("workspace_id", String(WORKSPACE_CHARS), nullable=False),
    Column("visitor_id", String(ID_CHARS), nullable=False),  # -> visitors.id
    Column("test", Boolean, nullable=False),  # the visitor's mode, copied (it never changes)
    Column("created_at", TS, nullable=False),
    # How many messages the chat has; posting increments it and takes the new value as the
    # message's position. The UPDATE also locks the chat row, so positions are handed out in
    # commit order and a reader paging by position never skips one committed later.
    Column("message_count", Integer, nullable=False),
)
Index("ix_chats_visitor", chats.c.visitor_id)

messages = Table(
    "messages",
    metadata,
    # Storage order across the database (the FTS5 rowid on SQLite): search's tie-break.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("id", String(ID_CHARS), nullable=False, unique=True),  # msg_ + 32 hex
    Column("chat_id", String(ID_CHARS), nullable=False),  # -> chats.id
    Column("workspace_id", String(WORKSPACE_CHARS), nullable=False),
    Column("test", Boolean, nullable=False),  # the chat's mode, for search's filter
    Column("position", Integer, nullable=False),  # 1, 2, ... within the chat
    Column("sender", String(SENDER_CHARS), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", TS, nullable=False),
)
Index("ux_messages_chat_position", messages.c.chat_id, messages.c.position, unique=True)
