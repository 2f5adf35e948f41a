"""ChatsService over the real store, on SQLite and on Postgres: chats, messages, paging, the
rules on bodies and the events they write (search has test_chats_search.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import secrets
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import MetaData, Table, func, select, text, update
from sqlalchemy.exc import DBAPIError

from palisade.common.outbox import outbox_columns
from palisade.visitors.chats.errors import (
    BodyTooLong,
    ChatNotFound,
    InvalidBody,
    InvalidPageSize,
    InvalidPageToken,
    VisitorErased,
    VisitorNotFound,
)
from palisade.visitors.chats.service import ChatsService
from palisade.visitors.chats.store import SqlChatStore
from palisade.visitors.chats.tables import chats, messages
from palisade.visitors.tables import visitors


def _load_support() -> ModuleType:
    """chats_support.py beside this file (importlib mode puts no test directory on sys.path)."""
    if "chats_support" in sys.modules:
        return sys.modules["chats_support"]
    spec = importlib.util.spec_from_file_location(
        "chats_support", Path(__file__).with_name("chats_support.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chats_support"] = module  # before exec: dataclasses look their module up
    spec.loader.exec_module(module)
    return module


support = _load_support()
Chats = support.Chats
agent, widget, workspace_id, chats_on = (
    support.agent,
    support.widget,
    support.workspace_id,
    support.chats_on,
)


@pytest.fixture
async def env(database_url: str) -> Any:
    async with chats_on(database_url) as running:
        yield running


async def _count(env: Chats, table: Any) -> int:
    async with env.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_a_chat_starts_with_a_visitor_of_the_callers_workspace_and_mode(env: Chats) -> None:
    ws = workspace_id()
    caller = agent(ws)
    visitor_id = await env.visitor(ws)
    chat = await env.service.create_chat(caller, visitor_id)
    assert chat.id.startswith("cht_")
    assert len(chat.id) == 36
    assert chat.visitor_id == visitor_id
    assert not chat.visitor_erased
    assert chat.created_at == env.clock.now()

    events = await env.events("chat.created")
    assert events == [
        {
            "actor": caller.actor,
            "subject": f"visitor:{visitor_id}",
            "workspace_id": ws,
            "ip": None,
            "device": None,
            "outcome": "success",
            "reason": None,
            "details": {"chat_id": chat.id, "visitor_id": visitor_id, "test": False},
        }
    ]


async def test_a_visitor_outside_the_workspace_or_mode_is_not_found(env: Chats) -> None:
    ws, other = workspace_id(), workspace_id()
    foreign = await env.visitor(other)
    test_visitor = await env.visitor(ws, test=True)
    live_visitor = await env.visitor(ws)
    for caller, visitor_id in (
        (agent(ws), foreign),
        (agent(ws), test_visitor),  # people and live keys see live visitors only
        (agent(ws, test=True), live_visitor),  # test keys see test visitors only
        (agent(ws), f"vis_{secrets.token_hex(16)}"),
        (agent(ws), "vis_\x00"),
        (agent(ws), ""),
        (agent(ws), live_visitor.upper()),
    ):
        with pytest.raises(VisitorNotFound):
            await env.service.create_chat(caller, visitor_id)
    assert await _count(env, chats) == 0
    assert await env.events("chat.created") == []
    test_chat = await env.service.create_chat(agent(ws, test=True), test_visitor)
    assert test_chat.visitor_id == test_visitor
    assert (await env.events("chat.created"))[0]["details"]["test"] is True


async def test_no_chat_starts_with_an_erased_visitor(env: Chats) -> None:
    ws = workspace_id()
    erased = await env.visitor(ws, erased=True)
    for caller in (agent(ws), widget(ws)):
        with pytest.raises(VisitorErased):
            await env.service.create_chat(caller, erased)
    assert await _count(env, chats) == 0


async def test_messages_are_from_the_visitor_for_publishable_keys_else_from_an_agent(
    env: Chats,
) -> None:
    ws = workspace_id()
    visitor_id = await env.visitor(ws)
    chat = await env.service.create_chat(widget(ws), visitor_id)
    from_widget = await env.service.post_message(widget(ws), chat.id, "  Hello, is anyone there?\n")
    env.clock.advance(1)
    from_agent = await env.service.post_message(agent(ws), chat.id, "Yes!\tHow can I help?")
    assert from_widget.sender == "visitor"
    assert from_agent.sender == "agent"
    assert from_widget.body == "Hello, is anyone there?"  # trimmed
    assert from_widget.id.startswith("msg_")
    assert len(from_widget.id) == 36
    page = await env.service.list_messages(agent(ws), chat.id, 0, "")
    assert [(m.id, m.body, m.sender) for m in page.messages] == [
        (from_widget.id, "Hello, is anyone there?", "visitor"),
        (from_agent.id, "Yes!\tHow can I help?", "agent"),
    ]
    assert page.next_token == ""


async def test_a_chat_outside_the_workspace_or_mode_is_not_found(env: Chats) -> None:
    ws = workspace_id()
    chat_id = await env.chat_with_messages(agent(ws), "first")
    test_chat = await env.chat_with_messages(agent(ws, test=True), "in test mode")
    for caller, target in (
        (agent(workspace_id()), chat_id),
        (widget(workspace_id()), chat_id),
        (agent(ws, test=True), chat_id),
        (agent(ws), test_chat),
        (agent(ws), f"cht_{secrets.token_hex(16)}"),
        (agent(ws), "cht_\x00"),
        (agent(ws), chat_id + " "),
    ):
        with pytest.raises(ChatNotFound):
            await env.service.post_message(caller, target, "hello")
        with pytest.raises(ChatNotFound):
            await env.service.list_messages(caller, target, 0, "")
    assert await _count(env, messages) == 2
    assert len(await env.events("chat.message.created")) == 2


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("", InvalidBody),
        ("   \n\t  ", InvalidBody),
        ("\u00a0\u2003", InvalidBody),  # Unicode spaces trim away too
        ("nul\x00inside", InvalidBody),
        ("bell\x07", InvalidBody),
        ("escape \x1b[31m red", InvalidBody),
        ("vertical\x0btab", InvalidBody),
        ("form\x0cfeed", InvalidBody),
        ("delete\x7f", InvalidBody),
        ("c1 \x85 next line", InvalidBody),
        ("lone \ud800 surrogate", InvalidBody),
        ("x" * 10_001, BodyTooLong),
        ("  " + "é" * 10_001 + "  ", BodyTooLong),
    ],
)
async def test_bodies_are_refused_whole(env: Chats, body: str, error: type[Exception]) -> None:
    ws = workspace_id()
    chat_id = await env.chat_with_messages(agent(ws))
    with pytest.raises(error):
        await env.service.post_message(agent(ws), chat_id, body)
    assert await _count(env, messages) == 0
    assert await env.events("chat.message.created") == []


async def test_bodies_up_to_the_limit_with_tabs_and_newlines_are_kept(env: Chats) -> None:
    ws = workspace_id()
    chat_id = await env.chat_with_messages(agent(ws))
    longest = "é" * 10_000
    for body in (longest, f"  \n{longest}\r\n  ", "line one\r\nline two\n\ttabbed", "🔥 ok"):
        posted = await env.service.post_message(agent(ws), chat_id, body)
        assert posted.body == body.strip()
    page = await env.service.list_messages(agent(ws), chat_id, 0, "")
    assert [m.body for m in page.messages] == [
        longest,
        longest,
        "line one\r\nline two\n\ttabbed",
        "🔥 ok",
    ]


async def test_message_events_carry_ids_and_never_the_body(env: Chats) -> None:
    ws = workspace_id()
    caller = widget(ws)
    visitor_id = await env.visitor(ws)
    chat = await env.service.create_chat(caller, visitor_id)
    secret_body = "my card number is 4111 1111 1111 1111"
    posted = await env.service.post_message(caller, chat.id, secret_body)
    events = await env.events("chat.message.created")
    assert events == [
        {
            "actor": caller.actor,
            "subject": f"visitor:{visitor_id}",
            "workspace_id": ws,
            "ip": None,
            "device": None,
            "outcome": "success",
            "reason": None,
            "details": {
                "chat_id": chat.id,
                "message_id": posted.id,
                "visitor_id": visitor_id,
                "sender": "visitor",
                "test": False,
            },
        }
    ]
    for payload in await env.raw_outbox():
        assert "4111" not in payload
        assert "card" not in payload


async def test_an_erased_visitors_chat_stays_and_only_agents_post_in_it(env: Chats) -> None:
    ws = workspace_id()
    visitor_id = await env.visitor(ws)
    chat = await env.service.create_chat(widget(ws), visitor_id)
    await env.service.post_message(widget(ws), chat.id, "before erasure")
    await env.erase(visitor_id)
    with pytest.raises(VisitorErased):
        await env.service.post_message(widget(ws), chat.id, "after erasure")
    closing = await env.service.post_message(agent(ws), chat.id, "closing note")
    assert closing.sender == "agent"
    page = await env.service.list_messages(agent(ws), chat.id, 0, "")
    assert [m.body for m in page.messages] == ["before erasure", "closing note"]
    found = await env.service.search_messages(agent(ws), "erasure", 0, "")
    assert [m.body for m in found.messages] == ["before erasure"]
    store_chat = await env.service._store.chat(agent(ws), chat.id)
    assert store_chat is not None
    assert store_chat.visitor_erased
    assert len(await env.events("chat.message.created")) == 2


async def test_messages_page_oldest_first_without_gaps_or_repeats(env: Chats) -> None:
    ws = workspace_id()
    bodies = [f"message {i}" for i in range(7)]
    chat_id = await env.chat_with_messages(agent(ws), *bodies)
    seen: list[str] = []
    token = ""
    sizes = []
    while True:
        page = await env.service.list_messages(agent(ws), chat_id, 3, token)
        sizes.append(len(page.messages))
        seen.extend(m.body for m in page.messages)
        token = page.next_token
        if not token:
            break
    assert sizes == [3, 3, 1]
    assert seen == bodies


async def test_a_message_posted_between_pages_comes_on_a_later_page(env: Chats) -> None:
    ws = workspace_id()
    chat_id = await env.chat_with_messages(agent(ws), "one", "two")
    first = await env.service.list_messages(agent(ws), chat_id, 2, "")
    assert first.next_token == ""  # exactly full: no more known
    await env.service.post_message(agent(ws), chat_id, "three")
    first = await env.service.list_messages(agent(ws), chat_id, 1, "")
    rest = await env.service.list_messages(agent(ws), chat_id, 5, first.next_token)
    assert [m.body for m in first.messages + rest.messages] == ["one", "two", "three"]


async def test_the_default_page_is_fifty_messages(env: Chats) -> None:
    ws = workspace_id()
    chat_id = await env.chat_with_messages(agent(ws), *(f"m{i}" for i in range(51)))
    page = await env.service.list_messages(agent(ws), chat_id, 0, "")
    assert len(page.messages) == 50
    assert page.next_token
    most = await env.service.list_messages(agent(ws), chat_id, 100, "")
    assert len(most.messages) == 51


@pytest.mark.parametrize("size", [-1, 101, 2**31 - 1, -(2**31)])
async def test_page_sizes_outside_the_range_are_refused(env: Chats, size: int) -> None:
    ws = workspace_id()
    chat_id = await env.chat_with_messages(agent(ws), "x")
    with pytest.raises(InvalidPageSize):
        await env.service.list_messages(agent(ws), chat_id, size, "")
    with pytest.raises(InvalidPageSize):
        await env.service.search_messages(agent(ws), "x", size, "")


async def test_list_tokens_are_bound_to_the_chat_workspace_and_mode(env: Chats) -> None:
    ws = workspace_id()
    caller = agent(ws)
    chat_id = await env.chat_with_messages(caller, "a", "b", "c")
    other_chat = await env.chat_with_messages(caller, "d", "e", "f")
    token = (await env.service.list_messages(caller, chat_id, 1, "")).next_token
    assert token
    # Another person of the same workspace may continue the same listing.
    again = await env.service.list_messages(agent(ws), chat_id, 1, token)
    assert [m.body for m in again.messages] == ["b"]
    with pytest.raises(InvalidPageToken):
        await env.service.list_messages(caller, other_chat, 1, token)
    with pytest.raises(InvalidPageToken):
        await env.service.search_messages(caller, "a", 1, token)
    version, payload, mac = token.split(".")
    forged = [
        "garbage",
        f"{version}.{payload}.{'A' * len(mac)}",
        f"{version}.{payload[:-1]}{'B' if payload[-1] != 'B' else 'C'}.{mac}",
        f"p2.{payload}.{mac}",
        token + ".x",
        token + "é",
        "x" * 10_000,
    ]
    for bad in forged:
        with pytest.raises(InvalidPageToken):
            await env.service.list_messages(caller, chat_id, 1, bad)
    # The same chat id in another mode or workspace is not found before any token is read.
    with pytest.raises(ChatNotFound):
        await env.service.list_messages(agent(ws, test=True), chat_id, 1, token)


async def test_parallel_posts_get_every_position_once(env: Chats) -> None:
    ws = workspace_id()
    visitor_id = await env.visitor(ws)
    chat = await env.service.create_chat(agent(ws), visitor_id)
    callers = [widget(ws) if i % 2 else agent(ws) for i in range(20)]
    posted = await asyncio.gather(
        *(env.service.post_message(c, chat.id, f"parallel {i}") for i, c in enumerate(callers))
    )
    assert sorted(m.position for m in posted) == list(range(1, 21))
    page = await env.service.list_messages(agent(ws), chat.id, 100, "")
    assert [m.id for m in page.messages] == [m.id for m in sorted(posted, key=lambda m: m.position)]
    assert len(await env.events("chat.message.created")) == 20


async def _until_waiting_on_a_lock(env: Chats) -> None:
    """Until some other session of this database waits for a row lock."""
    for _ in range(500):
        async with env.engine.connect() as conn:
            waiting = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the post never waited for the visitor's row")


@pytest.mark.postgres
async def test_a_visitor_post_racing_an_erasure_waits_for_it_and_is_refused(
    postgres_url: str,
) -> None:
    async with chats_on(postgres_url) as env:
        ws = workspace_id()
        visitor_id = await env.visitor(ws)
        chat = await env.service.create_chat(widget(ws), visitor_id)
        async with env.engine.connect() as eraser:
            await eraser.begin()
            # An erasure in progress holds the visitor's row.
            await eraser.execute(
                select(visitors.c.id).where(visitors.c.id == visitor_id).with_for_update()
            )
            post = asyncio.create_task(env.service.post_message(widget(ws), chat.id, "still here?"))
            await _until_waiting_on_a_lock(env)
            assert not post.done()
            await eraser.execute(
                update(visitors)
                .where(visitors.c.id == visitor_id)
                .values(erased_at=env.clock.now())
            )
            await eraser.commit()
        with pytest.raises(VisitorErased):
            await post
        assert await _count(env, messages) == 0


async def test_the_change_and_its_event_commit_together_or_not_at_all(env: Chats) -> None:
    ws = workspace_id()
    visitor_id = await env.visitor(ws)
    chat = await env.service.create_chat(agent(ws), visitor_id)
    # The same store writing its events to a table that is not there: the event's INSERT
    # fails after the chat's or message's, and neither may stay.
    broken = ChatsService(
        store=SqlChatStore(
            engine=env.engine,
            outbox_table=Table("no_outbox_here", MetaData(), *outbox_columns()),
        ),
        clock=env.clock,
        page_tokens=env.tokens,
    )
    with pytest.raises(DBAPIError):
        await broken.create_chat(agent(ws), visitor_id)
    with pytest.raises(DBAPIError):
        await broken.post_message(agent(ws), chat.id, "lost with its event")
    assert await _count(env, chats) == 1
    assert await _count(env, messages) == 0
    page = await env.service.list_messages(agent(ws), chat.id, 0, "")
    assert page.messages == []
    # The chat's position counter rolled back too: the next message is the first.
    first = await env.service.post_message(agent(ws), chat.id, "kept")
    assert first.position == 1
