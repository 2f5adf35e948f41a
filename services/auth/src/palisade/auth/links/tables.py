"""The tables of single-use emailed tokens, and which purposes each holds.

magic_links predates the core (migration 0003): it holds one purpose and calls its consumed-at
column `used_at`. Purposes to come can share one table with a purpose column (a new migration).
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, LargeBinary, String, Table

from palisade.auth.links.single_use import Purpose, TokenTable
from palisade.auth.sessions.tokens import TokenKind
from palisade.auth.store import TS, metadata

magic_links = Table(
    "magic_links",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False, index=True),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("used_at", TS, nullable=True),
    Column("requested_ip", String(64), nullable=True),
)

MAGIC_LINK = Purpose("magic_link", TokenKind.MAGIC_LINK)
MAGIC_LINK_TABLE = TokenTable(
    magic_links, consumed_column="used_at", purpose_column=None, only_purpose=MAGIC_LINK.name
)
