"""Chats on a real database (SQLite or Postgres), migrated to head, without a server: the
domain service over the real store, visitors inserted as rows, callers made by hand."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.clock import ManualClock
from palisade.common.db import create_engine
from palisade.common.migrations import upgrade
from palisade.common.page_tokens import PageTokens
from palisade.visitors.chats.errors import InvalidPageToken
from palisade.visitors.chats.service import ChatsService
from palisade.visitors.chats.store import SqlChatStore
from palisade.visitors.model import Scope
from palisade.visitors.tables import MIGRATIONS_PACKAGE, outbox_events, visitors

START = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)


def workspace_id() -> str:
    return f"ws_{secrets.token_hex(16)}"


def agent(workspace: str, *, test: bool = False) -> Scope:
    """A person (live), or a secret test-mode key."""
    actor = f"apikey:key_{secrets.token_hex(16)}" if test else f"user:usr_{secrets.token_hex(16)}"
    return Scope(workspace_id=workspace, test=test, actor=actor)


def widget(workspace: str, *, test: bool = False) -> Scope:
    """A publishable key in the visitor's browser."""
    actor = f"apikey:key_{secrets.token_hex(16)}"
    return Scope(workspace_id=workspace, test=test, actor=actor, publishable=True)


@dataclass
class Chats:
    engine: AsyncEngine
    clock: ManualClock
    service: ChatsService
    tokens: PageTokens

    async def visitor(self, workspace: str, *, test: bool = False, erased: bool = False) -> str:
        visitor_id = f"vis_{secrets.token_hex(16)}"
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(visitors).values(
                    id=visitor_id,
                    workspace_id=workspace,
                    test=test,
                    created_at=self.clock.now(),
                    erased_at=self.clock.now() if erased else None,
                )
            )
        return visitor_id

    async def erase(self, visitor_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(visitors)
                .where(visitors.c.id == visitor_id)
                .values(erased_at=self.clock.now())
            )

    async def chat_with_messages(self, caller: Scope, *bodies: str) -> str:
        visitor_id = await self.visitor(caller.workspace_id, test=caller.test)
        chat = await self.service.create_chat(caller, visitor_id)
        for body in bodies:
            await self.service.post_message(caller, chat.id, body)
            self.clock.advance(timedelta(seconds=1))
        return chat.id

    async def events(self, event_type: str) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(outbox_events.c.payload)
                .where(outbox_events.c.event_type == event_type)
                .order_by(outbox_events.c.id)
            )
            return [json.loads(r[0]) for r in rows]

    async def raw_outbox(self) -> list[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(outbox_events.c.payload))
            return [r[0] for r in rows]


@asynccontextmanager
async def chats_on(database_url: str) -> AsyncIterator[Chats]:
    engine = create_engine(database_url)
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)
        clock = ManualClock(START)
        tokens = PageTokens(secrets.token_bytes(32), invalid=InvalidPageToken)
        store = SqlChatStore(engine=engine, outbox_table=outbox_events)
        service = ChatsService(store=store, clock=clock, page_tokens=tokens)
        yield Chats(engine=engine, clock=clock, service=service, tokens=tokens)
    finally:
        await engine.dispose()
