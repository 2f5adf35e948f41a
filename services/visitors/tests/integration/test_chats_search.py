"""Full-text search over message bodies on SQLite (FTS5) and Postgres (tsvector): words and
stems, ranking, queries full of FTS syntax, isolation, and paging."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from palisade.visitors.chats.errors import InvalidPageToken, InvalidQuery


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


async def _bodies(env: Chats, caller: Any, query: str, size: int = 100) -> list[str]:
    page = await env.service.search_messages(caller, query, size, "")
    return [m.body for m in page.messages]


async def test_search_finds_words_and_their_stems(env: Chats) -> None:
    ws = workspace_id()
    caller = agent(ws)
    await env.chat_with_messages(
        caller,
        "She runs every morning",
        "I will run the report later",
        "Running late, sorry",
        "The weather is nice",
        "Refunds are processed within five days",
    )
    assert sorted(await _bodies(env, caller, "running")) == [
        "I will run the report later",
        "Running late, sorry",
        "She runs every morning",
    ]
    assert await _bodies(env, caller, "REFUND") == ["Refunds are processed within five days"]
    assert await _bodies(env, caller, "processing refund") == [
        "Refunds are processed within five days"
    ]
    # Every word must be there.
    assert await _bodies(env, caller, "refund weather") == []
    assert await _bodies(env, caller, "zebra") == []


async def test_best_matches_come_first_and_equals_newest_first(env: Chats) -> None:
    ws = workspace_id()
    caller = agent(ws)
    await env.chat_with_messages(
        caller,
        "an invoice",
        "We talked about many things today, the weather, the football results, lunch, and"
        " at some point near the end somebody mentioned an invoice in passing",
        "invoice invoice invoice",
        "an invoice",
    )
    page = await env.service.search_messages(caller, "invoice", 10, "")
    bodies = [m.body for m in page.messages]
    assert bodies[0] == "invoice invoice invoice"
    assert bodies[-1].startswith("We talked about many things")
    # The two equal ones: the later first.
    equal = [m for m in page.messages if m.body == "an invoice"]
    assert [m.created_at for m in equal] == sorted((m.created_at for m in equal), reverse=True)
    assert equal[0].created_at > equal[1].created_at


NASTY_QUERIES = [
    '"',
    '""',
    '"refund',
    "refund*",
    "*",
    "refund OR order",
    "OR",
    "AND",
    "NOT",
    "NEAR",
    "NEAR(refund order, 2)",
    "-refund",
    "refund -order",
    "refund:",
    "body:refund",
    "{body}:refund",
    "(refund",
    ")",
    "^refund",
    "refund & order",
    "refund | order",
    "!refund",
    "!!",
    "'refund'",
    "'",
    "refund <-> order",
    "<->",
    "refund:*",
    ":*",
    "a:*B",
    "refund'); DROP TABLE messages; --",
    "\\",
    "\\\\refund",
    "%",
    "_",
    "refund_order",
    "[refund]",
    "{refund}",
    "+refund",
    "refund~2",
    "refund^2",
    "\x00refund",
    "refund\x00",
    "\x00",
    "\u202erefund",
    "🔥",
    "🔥 refund",
    "退款",
    "e\u0301te",
    "NEAR/2",
    "refund NEAR/2 order",
    "@@",
    "$1",
    ":query",
    "?",
    ";",
    "0",
    "1e9999",
    "-" * 200,
    "a" * 200,
    "refund " * 28,
]


@pytest.mark.parametrize("query", NASTY_QUERIES)
async def test_fts_syntax_in_queries_is_text_never_an_error(env: Chats, query: str) -> None:
    ws = workspace_id()
    caller = agent(ws)
    await env.chat_with_messages(
        caller, "Where is my refund for the order?", "refund near order", "unrelated words"
    )
    try:
        page = await env.service.search_messages(caller, query, 10, "")
    except InvalidQuery:
        # Only a query with no letter or digit at all has no word left.
        assert not any(c.isalnum() for c in query)
        return
    assert any(c.isalnum() for c in query)
    for message in page.messages:
        assert message.body != "unrelated words"


@pytest.mark.parametrize(
    "query",
    [
        '"refund',
        "refund*",
        "(refund",
        "^refund",
        "!refund",
        "-refund",
        "'refund'",
        "refund:",
        "refund:*",
        "[refund]",
        "\x00refund",
        "+refund",
        "REFUND!!!",
    ],
)
async def test_punctuation_around_a_word_still_finds_it(env: Chats, query: str) -> None:
    ws = workspace_id()
    caller = agent(ws)
    await env.chat_with_messages(caller, "Where is my refund?", "unrelated words")
    assert await _bodies(env, caller, query) == ["Where is my refund?"]


async def test_operator_words_are_plain_words(env: Chats) -> None:
    ws = workspace_id()
    caller = agent(ws)
    await env.chat_with_messages(caller, "refund near order", "refund for the order")
    # NEAR is a word to find, not FTS5's proximity operator.
    assert await _bodies(env, caller, "NEAR(refund order)") == ["refund near order"]
    assert await _bodies(env, caller, "refund -order") == await _bodies(env, caller, "refund order")


@pytest.mark.parametrize("query", ["", "   ", "\t\n", "x" * 201, " " + "a" * 201])
async def test_empty_and_too_long_queries_are_refused(env: Chats, query: str) -> None:
    with pytest.raises(InvalidQuery):
        await env.service.search_messages(agent(workspace_id()), query, 10, "")


async def test_search_sees_only_the_callers_workspace_and_mode(env: Chats) -> None:
    ws, other = workspace_id(), workspace_id()
    body = "password reset question"
    live = await env.chat_with_messages(agent(ws), f"{body} (live)")
    test = await env.chat_with_messages(agent(ws, test=True), f"{body} (test)")
    foreign = await env.chat_with_messages(agent(other), f"{body} (other)")
    for caller, chat_id in (
        (agent(ws), live),
        (widget(ws), live),
        (agent(ws, test=True), test),
        (agent(other), foreign),
    ):
        page = await env.service.search_messages(caller, "password reset", 100, "")
        assert [m.chat_id for m in page.messages] == [chat_id]
    assert await _bodies(env, agent(workspace_id()), "password") == []


async def _all_pages(env: Chats, caller: Any, query: str, size: int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        page = await env.service.search_messages(caller, query, size, token)
        pages.append([m.id for m in page.messages])
        token = page.next_token
        if not token:
            return pages


async def test_search_pages_have_no_gaps_or_repeats(env: Chats) -> None:
    ws = workspace_id()
    caller = agent(ws)
    # Equal scores (identical bodies) and different ones, spread over several chats.
    for chat in range(3):
        bodies = ["shipping delay"] * 6 + [
            f"shipping {'delay ' * (i + 1)}in chat {chat}" for i in range(3)
        ]
        await env.chat_with_messages(caller, *bodies, "nothing to see")
    whole = (await env.service.search_messages(caller, "delayed shipping", 100, "")).messages
    assert len(whole) == 27
    pages = await _all_pages(env, caller, "delayed shipping", 4)
    assert [len(p) for p in pages] == [4] * 6 + [3]
    flat = [m for p in pages for m in p]
    assert flat == [m.id for m in whole]
    assert len(set(flat)) == 27


async def test_search_tokens_are_bound_to_the_query_workspace_and_mode(env: Chats) -> None:
    ws = workspace_id()
    caller = agent(ws)
    await env.chat_with_messages(caller, "refund one", "refund two", "refund three")
    first = await env.service.search_messages(caller, "refund", 1, "")
    token = first.next_token
    assert token
    # The same words, spelled otherwise, continue the same search.
    same = await env.service.search_messages(agent(ws), "  Refund!! ", 1, token)
    assert len(same.messages) == 1
    assert same.messages[0].id != first.messages[0].id
    for caller_, query in (
        (caller, "refunds"),
        (caller, "refund one"),
        (agent(ws, test=True), "refund"),
        (agent(workspace_id()), "refund"),
    ):
        with pytest.raises(InvalidPageToken):
            await env.service.search_messages(caller_, query, 1, token)
    version, payload, mac = token.split(".")
    for bad in ("nope", f"{version}.{payload}.{mac[::-1]}", f"{version}..{mac}", token[:-2]):
        with pytest.raises(InvalidPageToken):
            await env.service.search_messages(caller, "refund", 1, bad)


@pytest.mark.postgres
async def test_on_postgres_writes_between_pages_move_nothing_across_pages(
    postgres_url: str,
) -> None:
    async with chats_on(postgres_url) as env:
        ws = workspace_id()
        caller = agent(ws)
        await env.chat_with_messages(
            caller, *(f"ticket {'urgent ' * (i % 4 + 1)}number {i}" for i in range(12))
        )
        before = (await env.service.search_messages(caller, "urgent ticket", 100, "")).messages
        first = await env.service.search_messages(caller, "urgent ticket", 5, "")
        # Others write (in this and other workspaces) between the two requests.
        await env.chat_with_messages(caller, "urgent urgent ticket, brand new")
        await env.chat_with_messages(agent(workspace_id()), "urgent ticket elsewhere")
        rest = await _rest(env, caller, "urgent ticket", first.next_token)
        shown = [m.id for m in first.messages] + rest
        old = [m.id for m in before]
        assert [i for i in shown if i in old] == old
        assert len(shown) == len(set(shown))


async def _rest(env: Chats, caller: Any, query: str, token: str) -> list[str]:
    ids: list[str] = []
    while token:
        page = await env.service.search_messages(caller, query, 5, token)
        ids.extend(m.id for m in page.messages)
        token = page.next_token
    return ids
