"""Thin gRPC adapter for ChatsService: proto <-> domain and the caller, nothing else.

Domain errors (palisade.visitors.chats.errors) are PalisadeErrors: the service's error
interceptor maps them to their status and the `palisade-error-code` trailer.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.caller import require_caller
from palisade.common.clock import Clock
from palisade.common.page_tokens import PageTokens
from palisade.visitors.chats.access import READ, WRITE, chat_scope
from palisade.visitors.chats.model import ChatRecord, MessageRecord
from palisade.visitors.chats.service import ChatPage, ChatsService, MessagePage
from palisade.visitors.chats.store import SqlChatStore
from palisade_api.visitors.v1 import visitors_pb2 as pb
from palisade_api.visitors.v1 import visitors_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def _timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def chat_message(chat: ChatRecord) -> pb.Chat:
    return pb.Chat(
        id=chat.id,
        visitor_id=chat.visitor_id,
        created_at=_timestamp(chat.created_at),
        visitor_erased=chat.visitor_erased,
    )


def message_message(message: MessageRecord) -> pb.Message:
    return pb.Message(
        id=message.id,
        chat_id=message.chat_id,
        body=message.body,
        created_at=_timestamp(message.created_at),
        sender=message.sender,
        erased=message.erased,
    )


def page_message(page: MessagePage) -> pb.ListMessagesResponse:
    return pb.ListMessagesResponse(
        messages=[message_message(m) for m in page.messages], next_page_token=page.next_token
    )


def chat_page_message(page: ChatPage) -> pb.ListVisitorChatsResponse:
    return pb.ListVisitorChatsResponse(
        chats=[chat_message(c) for c in page.chats], next_page_token=page.next_token
    )


class ChatsServicer(visitors_pb2_grpc.ChatsServiceServicer):
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        clock: Clock,
        outbox_table: Table,
        page_tokens: PageTokens,
    ) -> None:
        store = SqlChatStore(engine=engine, outbox_table=outbox_table)
        self._service = ChatsService(store=store, clock=clock, page_tokens=page_tokens)

    async def CreateChat(self, request: pb.CreateChatRequest, context: Context) -> pb.Chat:
        caller = chat_scope(require_caller(), needs=WRITE)
        return chat_message(await self._service.create_chat(caller, request.visitor_id))

    async def PostMessage(self, request: pb.PostMessageRequest, context: Context) -> pb.Message:
        caller = chat_scope(require_caller(), needs=WRITE)
        posted = await self._service.post_message(caller, request.chat_id, request.body)
        return message_message(posted)

    async def GetChat(self, request: pb.GetChatRequest, context: Context) -> pb.Chat:
        caller = chat_scope(require_caller(), needs=READ)
        return chat_message(await self._service.get_chat(caller, request.id))

    async def ListVisitorChats(
        self, request: pb.ListVisitorChatsRequest, context: Context
    ) -> pb.ListVisitorChatsResponse:
        caller = chat_scope(require_caller(), needs=READ)
        page = await self._service.list_visitor_chats(
            caller, request.visitor_id, request.page_size, request.page_token
        )
        return chat_page_message(page)

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        caller = chat_scope(require_caller(), needs=READ)
        page = await self._service.list_messages(
            caller, request.chat_id, request.page_size, request.page_token
        )
        return page_message(page)

    async def SearchMessages(
        self, request: pb.SearchMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        caller = chat_scope(require_caller(), needs=READ)
        page = await self._service.search_messages(
            caller, request.q, request.page_size, request.page_token
        )
        return page_message(page)
