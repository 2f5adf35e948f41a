"""ChatsService over real gRPC (the visitors server with a real crypto), on SQLite and
Postgres: callers as the gateway signs them, error codes in the trailer, isolation, test mode,
erasure, search with hostile queries, paging."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from palisade_api.visitors.v1 import visitors_pb2 as pb
from palisade_api.visitors.v1 import visitors_pb2_grpc

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED


def new_ws() -> str:
    return f"ws_{secrets.token_hex(16)}"


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


@pytest.fixture
async def chats(harness: Any) -> AsyncIterator[visitors_pb2_grpc.ChatsServiceStub]:
    async with harness.signing.channel(harness.server.running.target) as channel:
        yield visitors_pb2_grpc.ChatsServiceStub(channel)


async def _chat(harness: Any, chats: Any, metadata: Any, visitor_md: Any = None) -> pb.Chat:
    visitor = await harness.create(visitor_md or metadata, name="Grace")
    return await chats.CreateChat(pb.CreateChatRequest(visitor_id=visitor.id), metadata=metadata)


async def test_a_conversation_between_a_widget_and_the_team(harness: Any, chats: Any) -> None:
    ws = new_ws()
    widget = harness.key(ws, type="publishable", scopes=("visitors:write", "chats:write"))
    visitor = await harness.create(widget, name="Grace Hopper", email="grace@example.com")
    chat = await chats.CreateChat(pb.CreateChatRequest(visitor_id=visitor.id), metadata=widget)
    assert chat.id.startswith("cht_")
    assert chat.visitor_id == visitor.id
    assert not chat.visitor_erased
    said = await chats.PostMessage(
        pb.PostMessageRequest(chat_id=chat.id, body=" My invoice is wrong \n"),
        metadata=harness.key(ws, type="publishable", scopes=("chats:write",)),
    )
    assert (said.chat_id, said.body, said.sender) == (chat.id, "My invoice is wrong", "visitor")
    harness.clock.advance(1)
    reply = await chats.PostMessage(
        pb.PostMessageRequest(chat_id=chat.id, body="Sorry! Fixing the invoices now."),
        metadata=harness.person(ws),
    )
    harness.clock.advance(1)
    backend = await chats.PostMessage(
        pb.PostMessageRequest(chat_id=chat.id, body="Invoice 42 reissued."),
        metadata=harness.key(ws),
    )
    assert (reply.sender, backend.sender) == ("agent", "agent")
    listed = await chats.ListMessages(
        pb.ListMessagesRequest(chat_id=chat.id), metadata=harness.person(ws)
    )
    assert [m.id for m in listed.messages] == [said.id, reply.id, backend.id]
    assert listed.messages[0] == said
    assert listed.next_page_token == ""
    found = await chats.SearchMessages(
        pb.SearchMessagesRequest(q="invoices"), metadata=harness.key(ws, scopes=("chats:read",))
    )
    assert {m.id for m in found.messages} == {said.id, reply.id, backend.id}
    # Events: one per chat and per message, ids only, never a body or the visitor's PII.
    [created] = await harness.events("chat.created")
    posted = await harness.events("chat.message.created")
    assert [json.loads(e.payload)["details"]["message_id"] for e in posted] == [
        said.id,
        reply.id,
        backend.id,
    ]
    assert [json.loads(e.payload)["details"]["sender"] for e in posted] == [
        "visitor",
        "agent",
        "agent",
    ]
    for event in [created, *posted]:
        assert "invoice" not in event.payload.lower()
        assert "Grace" not in event.payload
        assert json.loads(event.payload)["subject"] == f"visitor:{visitor.id}"


async def test_refusals_carry_their_status_and_code(harness: Any, chats: Any) -> None:
    ws = new_ws()
    me = harness.person(ws)
    chat = await _chat(harness, chats, me)
    refused = harness.refused
    unknown_chat = f"cht_{secrets.token_hex(16)}"
    await refused(
        chats.CreateChat(
            pb.CreateChatRequest(visitor_id=f"vis_{secrets.token_hex(16)}"), metadata=me
        ),
        NOT_FOUND,
        "visitor_not_found",
    )
    await refused(
        chats.PostMessage(pb.PostMessageRequest(chat_id=unknown_chat, body="hi"), metadata=me),
        NOT_FOUND,
        "chat_not_found",
    )
    await refused(
        chats.ListMessages(pb.ListMessagesRequest(chat_id=unknown_chat), metadata=me),
        NOT_FOUND,
        "chat_not_found",
    )
    for body, code in (
        ("", "invalid_body"),
        ("a\x00b", "invalid_body"),
        ("x" * 10_001, "body_too_long"),
    ):
        await refused(
            chats.PostMessage(pb.PostMessageRequest(chat_id=chat.id, body=body), metadata=me),
            INVALID,
            code,
        )
    await refused(
        chats.SearchMessages(pb.SearchMessagesRequest(q='"*()'), metadata=me),
        INVALID,
        "invalid_query",
    )
    await refused(
        chats.SearchMessages(pb.SearchMessagesRequest(q="x" * 201), metadata=me),
        INVALID,
        "invalid_query",
    )
    for size in (-1, 101):
        await refused(
            chats.ListMessages(
                pb.ListMessagesRequest(chat_id=chat.id, page_size=size), metadata=me
            ),
            INVALID,
            "invalid_page_size",
        )
    await refused(
        chats.ListMessages(
            pb.ListMessagesRequest(chat_id=chat.id, page_token="p1.x.y"), metadata=me
        ),
        INVALID,
        "invalid_page_token",
    )
    # A key without the method's scope, and callers that are no workspace's.
    await refused(
        chats.SearchMessages(
            pb.SearchMessagesRequest(q="hello"), metadata=harness.key(ws, scopes=("chats:write",))
        ),
        DENIED,
        "permission_denied",
    )
    await refused(
        chats.SearchMessages(
            pb.SearchMessagesRequest(q="hello"), metadata=harness.signing.marker("gateway")
        ),
        DENIED,
        "workspace_required",
    )
    assert len(await harness.events("chat.message.created")) == 0


async def test_workspaces_and_modes_never_see_each_others_chats(harness: Any, chats: Any) -> None:
    ws, other = new_ws(), new_ws()
    live_chat = await _chat(harness, chats, harness.person(ws))
    test_key = harness.key(ws, mode="test")
    test_chat = await _chat(harness, chats, test_key)
    for chat, metadata in (
        (live_chat, harness.person(ws)),
        (test_chat, harness.key(ws, mode="test")),
    ):
        await chats.PostMessage(
            pb.PostMessageRequest(chat_id=chat.id, body="quarterly budget review"),
            metadata=metadata,
        )
    strangers = (
        (live_chat, harness.key(ws, mode="test")),
        (live_chat, harness.person(other)),
        (live_chat, harness.key(other)),
        (test_chat, harness.person(ws)),
        (test_chat, harness.key(ws)),
        (test_chat, harness.key(other, mode="test")),
    )
    for chat, metadata in strangers:
        await harness.refused(
            chats.ListMessages(pb.ListMessagesRequest(chat_id=chat.id), metadata=metadata),
            NOT_FOUND,
            "chat_not_found",
        )
    for chat, metadata in strangers:
        await harness.refused(
            chats.PostMessage(pb.PostMessageRequest(chat_id=chat.id, body="x"), metadata=metadata),
            NOT_FOUND,
            "chat_not_found",
        )
    # A test visitor cannot get a live chat, nor the other way round.
    live_visitor = await harness.create(harness.person(ws), name="Live")
    await harness.refused(
        chats.CreateChat(
            pb.CreateChatRequest(visitor_id=live_visitor.id), metadata=harness.key(ws, mode="test")
        ),
        NOT_FOUND,
        "visitor_not_found",
    )
    await harness.refused(
        chats.CreateChat(
            pb.CreateChatRequest(visitor_id=live_visitor.id), metadata=harness.person(other)
        ),
        NOT_FOUND,
        "visitor_not_found",
    )
    for metadata, expected in (
        (harness.person(ws), [live_chat.id]),
        (harness.key(ws, mode="test"), [test_chat.id]),
        (harness.person(other), []),
        (harness.key(other, mode="test"), []),
    ):
        found = await chats.SearchMessages(pb.SearchMessagesRequest(q="budget"), metadata=metadata)
        assert [m.chat_id for m in found.messages] == expected


async def test_an_erased_visitor_keeps_the_history_and_gets_no_new_chat(
    harness: Any, chats: Any
) -> None:
    ws = new_ws()
    widget = harness.key(ws, type="publishable", scopes=("visitors:write", "chats:write"))
    visitor = await harness.create(widget, name="Erase Me")
    chat = await chats.CreateChat(pb.CreateChatRequest(visitor_id=visitor.id), metadata=widget)
    await chats.PostMessage(
        pb.PostMessageRequest(chat_id=chat.id, body="please forget me"),
        metadata=harness.key(ws, type="publishable", scopes=("chats:write",)),
    )
    await harness.stub.EraseVisitor(
        pb.EraseVisitorRequest(id=visitor.id), metadata=harness.person(ws)
    )
    await harness.refused(
        chats.CreateChat(pb.CreateChatRequest(visitor_id=visitor.id), metadata=harness.person(ws)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "visitor_erased",
    )
    await harness.refused(
        chats.PostMessage(
            pb.PostMessageRequest(chat_id=chat.id, body="one more thing"),
            metadata=harness.key(ws, type="publishable", scopes=("chats:write",)),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "visitor_erased",
    )
    note = await chats.PostMessage(
        pb.PostMessageRequest(chat_id=chat.id, body="Done: erased on request."),
        metadata=harness.person(ws),
    )
    assert note.sender == "agent"
    listed = await chats.ListMessages(
        pb.ListMessagesRequest(chat_id=chat.id), metadata=harness.person(ws)
    )
    # The history stays; what the visitor wrote is redacted (product decision), the agent's not.
    assert [(m.body, m.sender, m.erased) for m in listed.messages] == [
        ("", "visitor", True),
        ("Done: erased on request.", "agent", False),
    ]


HOSTILE = [
    '"',
    "refund*",
    "NEAR(refund order, 2)",
    "refund OR order",
    "-refund",
    "body:refund",
    "(refund",
    "^refund",
    "refund & order | !x",
    "'refund'",
    "refund'); DROP TABLE messages; --",
    "a:*",
    "<->",
    "\\",
    "\x00refund",
    "🔥",
    "退款",
    "{body} : refund",
    "* * *",
    "NOT",
]


async def _search(
    chats: Any, query: str, metadata: Any
) -> tuple[pb.ListMessagesResponse | None, grpc.aio.AioRpcError | None]:
    try:
        return await chats.SearchMessages(
            pb.SearchMessagesRequest(q=query), metadata=metadata
        ), None
    except grpc.aio.AioRpcError as error:
        return None, error


async def test_hostile_queries_answer_results_or_invalid_query_never_a_fault(
    harness: Any, chats: Any
) -> None:
    ws = new_ws()
    me = harness.person(ws)
    chat = await _chat(harness, chats, me)
    await chats.PostMessage(
        pb.PostMessageRequest(chat_id=chat.id, body="Where is my refund for order 7?"), metadata=me
    )
    for query in HOSTILE:
        answer, error = await _search(chats, query, me)
        if error is not None:
            assert error.code() == INVALID, (query, error)
            assert _code(error) == "invalid_query", query
            assert not any(c.isalnum() for c in query), query
            continue
        assert answer is not None
        bodies = [m.body for m in answer.messages]
        assert bodies in ([], ["Where is my refund for order 7?"]), query
    for query in ("refund*", "(refund", "^refund", "'refund'", "\x00refund", "-refund"):
        answer = await chats.SearchMessages(pb.SearchMessagesRequest(q=query), metadata=me)
        assert len(answer.messages) == 1, query


async def test_pages_over_grpc_and_tokens_bound_to_their_chat(harness: Any, chats: Any) -> None:
    ws = new_ws()
    me = harness.person(ws)
    chat = await _chat(harness, chats, me)
    other = await _chat(harness, chats, me)
    posted = []
    for i in range(5):
        message = await chats.PostMessage(
            pb.PostMessageRequest(chat_id=chat.id, body=f"status update {i}"), metadata=me
        )
        posted.append(message.id)
    seen: list[str] = []
    token = ""
    while True:
        page = await chats.ListMessages(
            pb.ListMessagesRequest(chat_id=chat.id, page_size=2, page_token=token), metadata=me
        )
        seen.extend(m.id for m in page.messages)
        token = page.next_page_token
        if not token:
            break
        foreign_token = token
    assert seen == posted
    await harness.refused(
        chats.ListMessages(
            pb.ListMessagesRequest(chat_id=other.id, page_token=foreign_token), metadata=me
        ),
        INVALID,
        "invalid_page_token",
    )
    await harness.refused(
        chats.ListMessages(
            pb.ListMessagesRequest(chat_id=chat.id, page_token=foreign_token),
            metadata=harness.key(ws, mode="test"),
        ),
        NOT_FOUND,
        "chat_not_found",
    )
    found: list[str] = []
    token = ""
    while True:
        page = await chats.SearchMessages(
            pb.SearchMessagesRequest(q="updates", page_size=2, page_token=token), metadata=me
        )
        found.extend(m.id for m in page.messages)
        token = page.next_page_token
        if not token:
            break
        search_token = token
    assert found == list(reversed(posted))  # equal scores: newest first
    await harness.refused(
        chats.SearchMessages(
            pb.SearchMessagesRequest(q="status", page_size=2, page_token=search_token), metadata=me
        ),
        INVALID,
        "invalid_page_token",
    )
