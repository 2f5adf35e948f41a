"""The chats store: one Protocol, one SQL implementation for Postgres and SQLite.

Writes run in one transaction with their outbox event (palisade.common.outbox.emit). Posting
takes the chat's row lock with the UPDATE that hands out the message's position, so positions
follow commit order on both backends (SQLite's BEGIN IMMEDIATE serialises writers anyway) and
ListMessages' cursor never skips a message committed later. Reading a visitor for a chat takes
a share lock on its row, so an erasure running at the same time is either seen or waits.
Full-text search differs per backend; palisade.visitors.chats.fts holds both statements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from sqlalchemy import Table, and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.common.outbox import SecurityEvent, emit
from palisade.visitors.chats.fts import SearchStatements, search_statements
from palisade.visitors.chats.model import (
    VISITOR,
    ChatCursor,
    ChatRecord,
    MessageRecord,
    NewMessage,
)
from palisade.visitors.chats.tables import chats, messages
from palisade.visitors.model import Scope
from palisade.visitors.tables import visitors

_MESSAGE_COLUMNS = (
    messages.c.id,
    messages.c.chat_id,
    messages.c.body,
    messages.c.sender,
    messages.c.created_at,
    messages.c.position,
    messages.c.seq,
)


def message_from(row: Sequence[Any]) -> MessageRecord:
    message_id, chat_id, body, sender, created_at, position, seq = row[:7]
    return MessageRecord(
        id=message_id,
        chat_id=chat_id,
        body=body,
        sender=sender,
        created_at=created_at,
        position=int(position),
        seq=int(seq),
        erased=sender == VISITOR and body == "",
    )


_CHAT_COLUMNS = (
    chats.c.id,
    chats.c.workspace_id,
    chats.c.visitor_id,
    chats.c.test,
    chats.c.created_at,
)


def chat_from(row: Sequence[Any], *, visitor_erased: bool) -> ChatRecord:
    chat_id, workspace_id, visitor_id, test, created_at = row[:5]
    return ChatRecord(
        id=chat_id,
        workspace_id=workspace_id,
        visitor_id=visitor_id,
        test=bool(test),
        created_at=created_at,
        visitor_erased=visitor_erased,
    )


class ChatTransaction(Protocol):
    async def visitor_erased(self, scope: Scope, visitor_id: str) -> bool | None:
        """Whether the visitor is erased (share-locking its row); None when there is no such
        visitor in the scope."""

    async def add_chat(self, chat: ChatRecord) -> None: ...

    async def visitor_of_chat(self, scope: Scope, chat_id: str) -> str | None:
        """The chat's visitor, or None when the chat is not in the scope."""

    async def claim_position(self, scope: Scope, chat_id: str) -> tuple[str, int] | None:
        """Locks the chat and hands out its next message position: (visitor id, position),
        or None when the chat is not in the scope."""

    async def add_message(self, scope: Scope, message: NewMessage, position: int) -> int:
        """Stores the message; its storage sequence number."""

    async def emit(self, event: SecurityEvent) -> None: ...


class ChatStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[ChatTransaction]: ...

    async def chat(self, scope: Scope, chat_id: str) -> ChatRecord | None:
        """The chat in the scope, visitor_erased read from its visitor's row."""

    async def visitor_chats(
        self, scope: Scope, visitor_id: str, after: ChatCursor | None, limit: int
    ) -> list[ChatRecord] | None:
        """Up to limit of the visitor's chats, newest first, after the cursor; None when the
        visitor is not in the scope (an erased visitor is: their row stays)."""

    async def messages_after(
        self, chat_id: str, after_position: int, limit: int
    ) -> list[MessageRecord]:
        """Up to limit messages of the chat after the position, oldest first."""

    async def search(
        self, scope: Scope, words: tuple[str, ...], after_seq: int | None, limit: int
    ) -> list[MessageRecord]:
        """Up to limit of the scope's messages holding every word (or its stem), best match
        first and, among equals, newest first; after_seq: the last message of the page
        before."""


class _SqlTransaction:
    def __init__(self, conn: AsyncConnection, outbox: Table) -> None:
        self._conn = conn
        self._outbox = outbox

    async def visitor_erased(self, scope: Scope, visitor_id: str) -> bool | None:
        row = (
            await self._conn.execute(
                select(visitors.c.erased_at)
                .where(
                    visitors.c.id == visitor_id,
                    visitors.c.workspace_id == scope.workspace_id,
                    visitors.c.test == scope.test,
                )
                .with_for_update(read=True)
            )
        ).first()
        return None if row is None else row[0] is not None

    async def add_chat(self, chat: ChatRecord) -> None:
        await self._conn.execute(
            insert(chats).values(
                id=chat.id,
                workspace_id=chat.workspace_id,
                visitor_id=chat.visitor_id,
                test=chat.test,
                created_at=chat.created_at,
                message_count=0,
            )
        )

    async def visitor_of_chat(self, scope: Scope, chat_id: str) -> str | None:
        found = await self._conn.scalar(
            select(chats.c.visitor_id).where(
                chats.c.id == chat_id,
                chats.c.workspace_id == scope.workspace_id,
                chats.c.test == scope.test,
            )
        )
        return None if found is None else str(found)

    async def claim_position(self, scope: Scope, chat_id: str) -> tuple[str, int] | None:
        row = (
            await self._conn.execute(
                update(chats)
                .where(
                    chats.c.id == chat_id,
                    chats.c.workspace_id == scope.workspace_id,
                    chats.c.test == scope.test,
                )
                .values(message_count=chats.c.message_count + 1)
                .returning(chats.c.visitor_id, chats.c.message_count)
            )
        ).first()
        return None if row is None else (str(row[0]), int(row[1]))

    async def add_message(self, scope: Scope, message: NewMessage, position: int) -> int:
        result = await self._conn.execute(
            insert(messages)
            .values(
                id=message.id,
                chat_id=message.chat_id,
                workspace_id=scope.workspace_id,
                test=scope.test,
                position=position,
                sender=message.sender,
                body=message.body,
                created_at=message.created_at,
            )
            .returning(messages.c.seq)
        )
        return int(result.scalar_one())

    async def emit(self, event: SecurityEvent) -> None:
        await emit(self._conn, self._outbox, event)


class SqlChatStore:
    def __init__(self, *, engine: AsyncEngine, outbox_table: Table) -> None:
        self._engine = engine
        self._outbox = outbox_table
        self._search: SearchStatements = search_statements(engine.dialect.name)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[ChatTransaction]:
        async with self._engine.begin() as conn:
            yield _SqlTransaction(conn, self._outbox)

    async def chat(self, scope: Scope, chat_id: str) -> ChatRecord | None:
        statement = (
            select(*_CHAT_COLUMNS, visitors.c.erased_at)
            .select_from(chats.join(visitors, visitors.c.id == chats.c.visitor_id))
            .where(
                chats.c.id == chat_id,
                chats.c.workspace_id == scope.workspace_id,
                chats.c.test == scope.test,
            )
        )
        async with self._engine.begin() as conn:
            row = (await conn.execute(statement)).first()
        return None if row is None else chat_from(row, visitor_erased=row[5] is not None)

    async def visitor_chats(
        self, scope: Scope, visitor_id: str, after: ChatCursor | None, limit: int
    ) -> list[ChatRecord] | None:
        statement = (
            select(*_CHAT_COLUMNS)
            .where(
                chats.c.visitor_id == visitor_id,
                chats.c.workspace_id == scope.workspace_id,
                chats.c.test == scope.test,
            )
            .order_by(chats.c.created_at.desc(), chats.c.id.desc())
            .limit(limit)
        )
        if after is not None:
            statement = statement.where(
                or_(
                    chats.c.created_at < after.created_at,
                    and_(chats.c.created_at == after.created_at, chats.c.id < after.chat_id),
                )
            )
        # The visitor and their chats read in one transaction: the flag and the list agree.
        async with self._engine.begin() as conn:
            visitor = (
                await conn.execute(
                    select(visitors.c.erased_at).where(
                        visitors.c.id == visitor_id,
                        visitors.c.workspace_id == scope.workspace_id,
                        visitors.c.test == scope.test,
                    )
                )
            ).first()
            if visitor is None:
                return None
            rows = (await conn.execute(statement)).all()
        erased = visitor[0] is not None
        return [chat_from(row, visitor_erased=erased) for row in rows]

    async def messages_after(
        self, chat_id: str, after_position: int, limit: int
    ) -> list[MessageRecord]:
        statement = (
            select(*_MESSAGE_COLUMNS)
            .where(and_(messages.c.chat_id == chat_id, messages.c.position > after_position))
            .order_by(messages.c.position)
            .limit(limit)
        )
        async with self._engine.begin() as conn:
            rows = (await conn.execute(statement)).all()
        return [message_from(row) for row in rows]

    async def search(
        self, scope: Scope, words: tuple[str, ...], after_seq: int | None, limit: int
    ) -> list[MessageRecord]:
        statement, params = self._search.page(scope, words, after_seq, limit)
        async with self._engine.begin() as conn:
            rows = (await conn.execute(statement, params)).all()
        return [message_from(row) for row in rows]
