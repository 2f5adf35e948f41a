"""The chats domain's records: what the store reads and writes, free of SQL and protobuf."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

VISITOR = "visitor"
AGENT = "agent"


@dataclass(frozen=True)
class ChatRecord:
    id: str
    workspace_id: str
    visitor_id: str
    test: bool
    created_at: datetime
    visitor_erased: bool


@dataclass(frozen=True)
class ChatCursor:
    """Where a page of a visitor's chats (newest first) ended: its last chat's creation moment
    and id (the tie-break among chats created in the same microsecond)."""

    created_at: datetime
    chat_id: str


@dataclass(frozen=True)
class NewMessage:
    id: str
    chat_id: str
    body: str
    sender: str  # VISITOR | AGENT
    created_at: datetime


@dataclass(frozen=True)
class MessageRecord:
    id: str
    chat_id: str
    body: str
    sender: str
    created_at: datetime
    position: int  # 1, 2, ... within the chat: ListMessages' cursor
    seq: int  # storage order in the database: search's tie-break and cursor
    # Redacted by its visitor's erasure (body emptied). A stored body is never empty otherwise
    # (clean_body refuses one), so an empty visitor message is exactly a redacted one.
    erased: bool = False
