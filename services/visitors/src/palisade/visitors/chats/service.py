"""Chats and messages: the domain rules of ChatsService, over the ChatStore Protocol.

Everything is scoped to the caller's Scope (workspace and mode): a chat or visitor outside it
answers as an unknown one. Events `chat.created` and `chat.message.created` commit with their
change through the outbox and carry ids only: never a body, never a client address (a
publishable key's client is the visitor).

Erased visitors: no new chat starts with one (`visitor_erased`). Their chats stay readable and
searchable (the history is the workspace's), and agents may still post in them (a closing
note, a reply to a message sent just before the erasure); the visitor's own side, a
publishable key, is refused with `visitor_erased`, since what it would post is new data about
a person who asked to be erased.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from palisade.common.clock import Clock
from palisade.common.outbox import SecurityEvent
from palisade.common.page_tokens import PageTokens
from palisade.common.page_tokens import scope as token_scope
from palisade.visitors.chats.access import mode_of, sender_of
from palisade.visitors.chats.errors import (
    ChatNotFound,
    InvalidPageSize,
    VisitorErased,
    VisitorNotFound,
)
from palisade.visitors.chats.model import (
    VISITOR,
    ChatCursor,
    ChatRecord,
    MessageRecord,
    NewMessage,
)
from palisade.visitors.chats.store import ChatStore, ChatTransaction
from palisade.visitors.chats.text import clean_body, query_words
from palisade.visitors.model import Scope

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
CHAT_ID = re.compile(r"cht_[0-9a-f]{32}")
VISITOR_ID = re.compile(r"vis_[0-9a-f]{32}")
_LIST_SCOPE = "palisade.visitors.v1.ChatsService/ListMessages"
_SEARCH_SCOPE = "palisade.visitors.v1.ChatsService/SearchMessages"
_VISITOR_CHATS_SCOPE = "palisade.visitors.v1.ChatsService/ListVisitorChats"


def page_size(requested: int) -> int:
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    if not 0 < requested <= MAX_PAGE_SIZE:
        raise InvalidPageSize()
    return requested


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class MessagePage:
    messages: list[MessageRecord]
    next_token: str  # "" on the last page


@dataclass(frozen=True)
class ChatPage:
    chats: list[ChatRecord]
    next_token: str  # "" on the last page


class ChatsService:
    def __init__(self, *, store: ChatStore, clock: Clock, page_tokens: PageTokens) -> None:
        self._store = store
        self._clock = clock
        self._tokens = page_tokens

    async def create_chat(self, caller: Scope, visitor_id: str) -> ChatRecord:
        # An id of a form the service never mints names no visitor (and a NUL, which Postgres
        # refuses in text, never reaches the database).
        if not VISITOR_ID.fullmatch(visitor_id):
            raise VisitorNotFound()
        now = self._clock.now()
        chat = ChatRecord(
            id=new_id("cht"),
            workspace_id=caller.workspace_id,
            visitor_id=visitor_id,
            test=caller.test,
            created_at=now,
            visitor_erased=False,
        )
        async with self._store.transaction() as tx:
            await _require_visitor(tx, caller, visitor_id)
            await tx.add_chat(chat)
            await tx.emit(
                SecurityEvent(
                    type="chat.created",
                    occurred_at=now,
                    actor=caller.actor,
                    subject=f"visitor:{visitor_id}",
                    workspace_id=caller.workspace_id,
                    details={"chat_id": chat.id, "visitor_id": visitor_id, "test": caller.test},
                )
            )
        return chat

    async def post_message(self, caller: Scope, chat_id: str, raw_body: str) -> MessageRecord:
        body = clean_body(raw_body)
        if not CHAT_ID.fullmatch(chat_id):
            raise ChatNotFound()
        now = self._clock.now()
        message = NewMessage(
            id=new_id("msg"), chat_id=chat_id, body=body, sender=sender_of(caller), created_at=now
        )
        async with self._store.transaction() as tx:
            if message.sender == VISITOR:
                # Visitor first, then the chat: the order CreateChat (and erasure) lock them in.
                visitor_id = await tx.visitor_of_chat(caller, chat_id)
                if visitor_id is None:
                    raise ChatNotFound()
                await _require_visitor(tx, caller, visitor_id)
            claimed = await tx.claim_position(caller, chat_id)
            if claimed is None:
                raise ChatNotFound()
            visitor_id, position = claimed
            seq = await tx.add_message(caller, message, position)
            await tx.emit(
                SecurityEvent(
                    type="chat.message.created",
                    occurred_at=now,
                    actor=caller.actor,
                    subject=f"visitor:{visitor_id}",
                    workspace_id=caller.workspace_id,
                    details={
                        "chat_id": chat_id,
                        "message_id": message.id,
                        "visitor_id": visitor_id,
                        "sender": message.sender,
                        "test": caller.test,
                    },
                )
            )
        return MessageRecord(
            id=message.id,
            chat_id=chat_id,
            body=body,
            sender=message.sender,
            created_at=now,
            position=position,
            seq=seq,
        )

    async def get_chat(self, caller: Scope, chat_id: str) -> ChatRecord:
        if not CHAT_ID.fullmatch(chat_id):
            raise ChatNotFound()
        chat = await self._store.chat(caller, chat_id)
        if chat is None:
            raise ChatNotFound()
        return chat

    async def list_visitor_chats(
        self, caller: Scope, visitor_id: str, requested_size: int, token: str
    ) -> ChatPage:
        """The visitor's chats, newest first; an erased visitor's too (their history stays)."""
        size = page_size(requested_size)
        if not VISITOR_ID.fullmatch(visitor_id):
            raise VisitorNotFound()
        bound = token_scope(_VISITOR_CHATS_SCOPE, caller.workspace_id, mode_of(caller), visitor_id)
        after = ChatCursor(*self._tokens.read_str(token, bound)) if token else None
        found = await self._store.visitor_chats(caller, visitor_id, after, size + 1)
        if found is None:
            raise VisitorNotFound()
        if len(found) <= size:
            return ChatPage(found, "")
        last = found[size - 1]
        return ChatPage(found[:size], self._tokens.issue(bound, last.created_at, last.id))

    async def list_messages(
        self, caller: Scope, chat_id: str, requested_size: int, token: str
    ) -> MessagePage:
        size = page_size(requested_size)
        if not CHAT_ID.fullmatch(chat_id):
            raise ChatNotFound()
        if await self._store.chat(caller, chat_id) is None:
            raise ChatNotFound()
        bound = token_scope(_LIST_SCOPE, caller.workspace_id, mode_of(caller), chat_id)
        after = self._tokens.read_int(token, bound)[1] if token else 0
        rows = await self._store.messages_after(chat_id, after, size + 1)
        if len(rows) <= size:
            return MessagePage(rows, "")
        last = rows[size - 1]
        return MessagePage(rows[:size], self._tokens.issue(bound, last.created_at, last.position))

    async def search_messages(
        self, caller: Scope, query: str, requested_size: int, token: str
    ) -> MessagePage:
        size = page_size(requested_size)
        words = query_words(query)
        # Bound to the words searched for, not to how the query spelled them.
        bound = token_scope(_SEARCH_SCOPE, caller.workspace_id, mode_of(caller), *words)
        after = self._tokens.read_int(token, bound)[1] if token else None
        rows = await self._store.search(caller, words, after, size + 1)
        if len(rows) <= size:
            return MessagePage(rows, "")
        last = rows[size - 1]
        return MessagePage(rows[:size], self._tokens.issue(bound, last.created_at, last.seq))


async def _require_visitor(tx: ChatTransaction, caller: Scope, visitor_id: str) -> None:
    erased = await tx.visitor_erased(caller, visitor_id)
    if erased is None:
        raise VisitorNotFound()
    if erased:
        raise VisitorErased()
