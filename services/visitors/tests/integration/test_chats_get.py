"""GetChat and ListVisitorChats over real gRPC (the visitors server with a real crypto), on
SQLite and Postgres: a chat shows its visitor as erased once they are, and the history stays
listed; workspaces and modes isolated; malformed ids answer as unknown ones; a visitor's chats
paged newest first with tokens bound to the workspace, the mode and the visitor."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, timedelta
from typing import Any

import grpc
import pytest

from palisade.common.page_tokens import PageTokens, scope
from palisade_api.visitors.v1 import visitors_pb2 as pb
from palisade_api.visitors.v1 import visitors_pb2_grpc

NOT_FOUND = grpc.StatusCode.NOT_FOUND
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def new_ws() -> str:
    return f"ws_{secrets.token_hex(16)}"


@pytest.fixture
async def chats(harness: Any) -> AsyncIterator[visitors_pb2_grpc.ChatsServiceStub]:
    async with harness.signing.channel(harness.server.running.target) as channel:
        yield visitors_pb2_grpc.ChatsServiceStub(channel)


async def _visitor_chats(chats: Any, visitor_id: str, metadata: Any, size: int = 0) -> list[str]:
    """Every page of the visitor's chats, their ids in the order the pages gave them."""
    ids: list[str] = []
    token = ""
    for _ in range(50):
        page = await chats.ListVisitorChats(
            pb.ListVisitorChatsRequest(visitor_id=visitor_id, page_size=size, page_token=token),
            metadata=metadata,
        )
        ids += [c.id for c in page.chats]
        token = page.next_page_token
        if not token:
            return ids
    raise AssertionError("the pages never ended")


async def test_a_chat_shows_its_visitor_erased_and_keeps_its_history(
    harness: Any, chats: Any
) -> None:
    ws = new_ws()
    me = harness.person(ws)
    reader = harness.key(ws, scopes=("chats:read",))
    visitor = await harness.create(me, name="Erase Me", email="erase@example.com")
    chat = await chats.CreateChat(pb.CreateChatRequest(visitor_id=visitor.id), metadata=me)
    await chats.PostMessage(
        pb.PostMessageRequest(chat_id=chat.id, body="please forget me"),
        metadata=harness.key(ws, type="publishable", scopes=("chats:write",)),
    )
    for metadata in (me, reader):
        got = await chats.GetChat(pb.GetChatRequest(id=chat.id), metadata=metadata)
        assert got == chat
        assert not got.visitor_erased
    listed = await chats.ListVisitorChats(
        pb.ListVisitorChatsRequest(visitor_id=visitor.id), metadata=reader
    )
    assert list(listed.chats) == [chat]
    assert listed.next_page_token == ""

    await harness.stub.EraseVisitor(pb.EraseVisitorRequest(id=visitor.id), metadata=me)

    for metadata in (me, reader):
        got = await chats.GetChat(pb.GetChatRequest(id=chat.id), metadata=metadata)
        assert got.visitor_erased
        assert (got.id, got.visitor_id, got.created_at) == (
            chat.id,
            visitor.id,
            chat.created_at,
        )
        listed = await chats.ListVisitorChats(
            pb.ListVisitorChatsRequest(visitor_id=visitor.id), metadata=metadata
        )
        assert [(c.id, c.visitor_erased) for c in listed.chats] == [(chat.id, True)]
        messages = await chats.ListMessages(
            pb.ListMessagesRequest(chat_id=chat.id), metadata=metadata
        )
        # Kept in the history (id, time), its body redacted by the erasure.
        assert [(m.body, m.erased) for m in messages.messages] == [("", True)]
    # The visitor's own side still cannot add to it.
    await harness.refused(
        chats.PostMessage(
            pb.PostMessageRequest(chat_id=chat.id, body="one more thing"),
            metadata=harness.key(ws, type="publishable", scopes=("chats:write",)),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "visitor_erased",
    )


async def test_a_visitor_without_chats_lists_none(harness: Any, chats: Any) -> None:
    ws = new_ws()
    visitor = await harness.create(harness.person(ws), name="Quiet")
    listed = await chats.ListVisitorChats(
        pb.ListVisitorChatsRequest(visitor_id=visitor.id), metadata=harness.person(ws)
    )
    assert list(listed.chats) == []
    assert listed.next_page_token == ""


async def test_workspaces_and_modes_never_see_each_others_chats(harness: Any, chats: Any) -> None:
    ws, other = new_ws(), new_ws()
    live_visitor = await harness.create(harness.person(ws), name="Live")
    live_chat = await chats.CreateChat(
        pb.CreateChatRequest(visitor_id=live_visitor.id), metadata=harness.person(ws)
    )
    test_key = harness.key(ws, mode="test")
    test_visitor = await harness.create(test_key, name="Test")
    test_chat = await chats.CreateChat(
        pb.CreateChatRequest(visitor_id=test_visitor.id), metadata=test_key
    )
    # The owners see theirs.
    for chat, visitor, metadata in (
        (live_chat, live_visitor, harness.key(ws)),
        (test_chat, test_visitor, harness.key(ws, mode="test")),
    ):
        assert await chats.GetChat(pb.GetChatRequest(id=chat.id), metadata=metadata) == chat
        assert await _visitor_chats(chats, visitor.id, metadata) == [chat.id]
    strangers = (
        (live_chat, live_visitor, harness.key(ws, mode="test")),
        (live_chat, live_visitor, harness.person(other)),
        (live_chat, live_visitor, harness.key(other)),
        (test_chat, test_visitor, harness.person(ws)),
        (test_chat, test_visitor, harness.key(ws)),
        (test_chat, test_visitor, harness.key(other, mode="test")),
    )
    for chat, visitor, metadata in strangers:
        await harness.refused(
            chats.GetChat(pb.GetChatRequest(id=chat.id), metadata=metadata),
            NOT_FOUND,
            "chat_not_found",
        )
        await harness.refused(
            chats.ListVisitorChats(
                pb.ListVisitorChatsRequest(visitor_id=visitor.id), metadata=metadata
            ),
            NOT_FOUND,
            "visitor_not_found",
        )
    # Erased or not, a stranger learns nothing more.
    await harness.stub.EraseVisitor(
        pb.EraseVisitorRequest(id=live_visitor.id), metadata=harness.person(ws)
    )
    await harness.refused(
        chats.GetChat(pb.GetChatRequest(id=live_chat.id), metadata=harness.person(other)),
        NOT_FOUND,
        "chat_not_found",
    )
    await harness.refused(
        chats.ListVisitorChats(
            pb.ListVisitorChatsRequest(visitor_id=live_visitor.id), metadata=harness.person(other)
        ),
        NOT_FOUND,
        "visitor_not_found",
    )


async def test_a_key_without_chats_read_is_refused(harness: Any, chats: Any) -> None:
    ws = new_ws()
    visitor = await harness.create(harness.person(ws), name="Ada")
    chat = await chats.CreateChat(
        pb.CreateChatRequest(visitor_id=visitor.id), metadata=harness.person(ws)
    )
    writer = harness.key(ws, scopes=("visitors:read", "chats:write"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chats.GetChat(pb.GetChatRequest(id=chat.id), metadata=writer)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chats.ListVisitorChats(
            pb.ListVisitorChatsRequest(visitor_id=visitor.id), metadata=writer
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


MALFORMED = [
    "",
    "cht_",
    "vis_",
    "cht_" + "A" * 32,
    "cht_" + "0" * 31,
    "cht_" + "0" * 33,
    "vis_" + "0" * 32 + "\n",
    "msg_" + "0" * 32,
    "cht_" + "0" * 31 + "\x00",
    "cht_" + "0" * 16 + "'; DROP TABLE chats; --",
    "../cht_" + "0" * 32,
    "cht_" + "٠" * 32,  # Arabic-Indic zeros: digits to \d, not to [0-9a-f]
    "x" * 10_000,
]


async def test_malformed_and_unknown_ids_answer_as_unknown(harness: Any, chats: Any) -> None:
    ws = new_ws()
    me = harness.person(ws)
    visitor = await harness.create(me, name="Ada")
    chat = await chats.CreateChat(pb.CreateChatRequest(visitor_id=visitor.id), metadata=me)
    chat_ids = [
        *MALFORMED,
        f"cht_{secrets.token_hex(16)}",
        visitor.id,  # a visitor's id is no chat's
        chat.id.upper(),
        chat.id.replace("cht_", "vis_"),
    ]
    for chat_id in chat_ids:
        await harness.refused(
            chats.GetChat(pb.GetChatRequest(id=chat_id), metadata=me), NOT_FOUND, "chat_not_found"
        )
    visitor_ids = [
        *MALFORMED,
        f"vis_{secrets.token_hex(16)}",
        chat.id,  # a chat's id is no visitor's
        visitor.id.upper(),
        visitor.id.replace("vis_", "cht_"),
    ]
    for visitor_id in visitor_ids:
        await harness.refused(
            chats.ListVisitorChats(pb.ListVisitorChatsRequest(visitor_id=visitor_id), metadata=me),
            NOT_FOUND,
            "visitor_not_found",
        )
    # The real ones still answer.
    assert await chats.GetChat(pb.GetChatRequest(id=chat.id), metadata=me) == chat
    assert await _visitor_chats(chats, visitor.id, me) == [chat.id]


async def test_a_visitors_chats_page_newest_first_with_bound_tokens(
    harness: Any, chats: Any
) -> None:
    ws = new_ws()
    me = harness.person(ws)
    visitor = await harness.create(me, name="Ada")
    neighbour = await harness.create(me, name="Grace")
    created: list[pb.Chat] = []
    # Two created in the same instant: the id breaks the tie, and no page loses either.
    for step in (1, 0, 1, 1, 0, 1):
        harness.clock.advance(timedelta(seconds=step))
        created.append(
            await chats.CreateChat(pb.CreateChatRequest(visitor_id=visitor.id), metadata=me)
        )
        await chats.CreateChat(pb.CreateChatRequest(visitor_id=neighbour.id), metadata=me)
    newest_first = [
        c.id for c in sorted(created, key=lambda c: (c.created_at.ToDatetime(), c.id), reverse=True)
    ]
    assert len({c.created_at.ToDatetime() for c in created}) == 4
    for size in (1, 2, 4, 5, 6, 100, 0):
        assert await _visitor_chats(chats, visitor.id, me, size) == newest_first, size

    first = await chats.ListVisitorChats(
        pb.ListVisitorChatsRequest(visitor_id=visitor.id, page_size=2), metadata=me
    )
    assert [c.id for c in first.chats] == newest_first[:2]
    token = first.next_page_token
    assert token
    # A chat started meanwhile is newer than the cursor: the next pages neither repeat nor skip.
    harness.clock.advance(timedelta(seconds=5))
    await chats.CreateChat(pb.CreateChatRequest(visitor_id=visitor.id), metadata=me)
    rest: list[str] = []
    while token:
        page = await chats.ListVisitorChats(
            pb.ListVisitorChatsRequest(visitor_id=visitor.id, page_size=2, page_token=token),
            metadata=me,
        )
        rest += [c.id for c in page.chats]
        token = page.next_page_token
    assert rest == newest_first[2:]

    refused = harness.refused
    # The token for this visitor, workspace and mode only.
    neighbour_call = chats.ListVisitorChats(
        pb.ListVisitorChatsRequest(visitor_id=neighbour.id, page_token=first.next_page_token),
        metadata=me,
    )
    await refused(neighbour_call, INVALID, "invalid_page_token")
    test_visitor = await harness.create(harness.key(ws, mode="test"), name="Test")
    await refused(
        chats.ListVisitorChats(
            pb.ListVisitorChatsRequest(
                visitor_id=test_visitor.id, page_token=first.next_page_token
            ),
            metadata=harness.key(ws, mode="test"),
        ),
        INVALID,
        "invalid_page_token",
    )
    # Another chat's ListMessages token, a token made with another key, a changed one, junk.
    chat = created[0]
    for n in range(3):
        await chats.PostMessage(pb.PostMessageRequest(chat_id=chat.id, body=f"m{n}"), metadata=me)
    messages = await chats.ListMessages(
        pb.ListMessagesRequest(chat_id=chat.id, page_size=1), metadata=me
    )
    assert messages.next_page_token
    bound = scope("palisade.visitors.v1.ChatsService/ListVisitorChats", ws, "live", visitor.id)
    forged = PageTokens(secrets.token_bytes(32), invalid=ValueError).issue(
        bound, created[-1].created_at.ToDatetime(UTC), created[-1].id
    )
    version, payload, mac = first.next_page_token.split(".")
    changed = ".".join((version, payload[:-1] + ("A" if payload[-1] != "A" else "B"), mac))
    for bad in (
        messages.next_page_token,
        forged,
        changed,
        "p1.x.y",
        "garbage",
        first.next_page_token + "x",
        "é" * 10,
        "x" * 500,
    ):
        await refused(
            chats.ListVisitorChats(
                pb.ListVisitorChatsRequest(visitor_id=visitor.id, page_token=bad), metadata=me
            ),
            INVALID,
            "invalid_page_token",
        )
    for size in (-1, 101):
        await refused(
            chats.ListVisitorChats(
                pb.ListVisitorChatsRequest(visitor_id=visitor.id, page_size=size), metadata=me
            ),
            INVALID,
            "invalid_page_size",
        )
