"""Chats and messages end to end over real HTTP: who sent what, paging, full-text search that
takes every query as plain words (never FTS syntax, never a 5xx), and clear 400s."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from .conftest import Suite
from .visitors_support import SHOP, api_key, create_visitor, owner, post_message, start_chat

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _chat(suite: Suite) -> tuple[str, str, str]:
    """(owner's token, a secret key, a chat id) in a new workspace."""
    token = await owner(suite)
    key = await api_key(suite, token)
    visitor = await create_visitor(suite, key, name="Ada")
    return token, key, (await start_chat(suite, key, visitor["id"]))["id"]


async def test_messages_are_listed_oldest_first_with_their_sender(suite: Suite) -> None:
    token, key, chat_id = await _chat(suite)
    widget = await api_key(suite, token, type="publishable")
    first = await post_message(suite, widget, chat_id, "  Hello, my order is late  ", origin=SHOP)
    assert (first["sender"], first["body"], first["chatId"]) == (
        "visitor",
        "Hello, my order is late",
        chat_id,
    )
    second = await post_message(suite, key, chat_id, "Sorry! Checking now.")
    third = await post_message(suite, token, chat_id, "Found it:\n\tit ships today")
    assert second["sender"] == third["sender"] == "agent"
    status, listed, _ = await suite.json_call("GET", f"/v1/chats/{chat_id}/messages", token=key)
    assert status == 200
    assert [m["id"] for m in listed["messages"]] == [first["id"], second["id"], third["id"]]
    assert "nextPageToken" not in listed
    # Paged: two, then one, then the end.
    status, page, _ = await suite.json_call(
        "GET", f"/v1/chats/{chat_id}/messages?pageSize=2", token=key
    )
    assert [m["id"] for m in page["messages"]] == [first["id"], second["id"]]
    status, rest, _ = await suite.json_call(
        "GET",
        f"/v1/chats/{chat_id}/messages?pageSize=2&pageToken={quote(page['nextPageToken'])}",
        token=key,
    )
    assert [m["id"] for m in rest["messages"]] == [third["id"]]
    assert "nextPageToken" not in rest


async def test_bad_messages_and_page_tokens_are_clear_400s(suite: Suite) -> None:
    _, key, chat_id = await _chat(suite)
    other_visitor = await create_visitor(suite, key, name="B")
    other_chat = (await start_chat(suite, key, other_visitor["id"]))["id"]
    for _ in range(3):
        await post_message(suite, key, chat_id, "one more")
    for body, code in (
        ("", "invalid_body"),
        ("   \n\t ", "invalid_body"),
        ("nul \x00 inside", "invalid_body"),
        ("bell \x07", "invalid_body"),
        ("x" * 10_001, "body_too_long"),
    ):
        status, answer, _ = await suite.json_call(
            "POST", f"/v1/chats/{chat_id}/messages", json={"body": body}, token=key
        )
        assert (status, answer["code"]) == (400, code), body[:20]
    assert (await post_message(suite, key, chat_id, "y" * 10_000))["body"] == "y" * 10_000
    status, page, _ = await suite.json_call(
        "GET", f"/v1/chats/{chat_id}/messages?pageSize=1", token=key
    )
    token_of_page = page["nextPageToken"]
    forged = token_of_page[:-2] + ("AA" if not token_of_page.endswith("AA") else "BB")
    for path in (
        f"/v1/chats/{chat_id}/messages?pageToken={quote(forged)}",
        f"/v1/chats/{chat_id}/messages?pageToken=made-up",
        f"/v1/chats/{other_chat}/messages?pageToken={quote(token_of_page)}",  # another chat's
        f"/v1/chats/search?q=more&pageToken={quote(token_of_page)}",  # a listing's, in search
    ):
        status, answer, _ = await suite.json_call("GET", path, token=key)
        assert (status, answer["code"]) == (400, "invalid_page_token"), path
    for size in ("-1", "101", "abc"):
        status, answer, _ = await suite.json_call(
            "GET", f"/v1/chats/{chat_id}/messages?pageSize={size}", token=key
        )
        assert status == 400, (size, answer)


async def test_search_finds_words_and_stems_best_first(suite: Suite) -> None:
    _, key, chat_id = await _chat(suite)
    refund = await post_message(suite, key, chat_id, "I would like a refund for the broken kettle")
    refunds = await post_message(suite, key, chat_id, "Refunds, refunds: two refunds please")
    await post_message(suite, key, chat_id, "The weather is lovely today")
    status, found, _ = await suite.json_call("GET", "/v1/chats/search?q=refunded", token=key)
    assert status == 200
    ids = [m["id"] for m in found["messages"]]
    assert set(ids) == {refund["id"], refunds["id"]}
    assert ids[0] == refunds["id"]  # more matches ranks first
    status, found, _ = await suite.json_call("GET", "/v1/chats/search?q=Kettles", token=key)
    assert [m["id"] for m in found["messages"]] == [refund["id"]]
    status, found, _ = await suite.json_call("GET", "/v1/chats/search?q=umbrella", token=key)
    assert (status, found.get("messages", [])) == (200, [])


FTS_QUERIES = [
    '"',
    '"unterminated',
    "*",
    "refund*",
    "OR",
    "AND",
    "NOT refund",
    "refund OR kettle",
    "NEAR(refund kettle)",
    "body:refund",
    "messages:refund",
    "-refund",
    "+refund",
    "(",
    ")",
    "((refund)",
    "^refund",
    "refund & kettle",
    "refund | kettle",
    "!refund",
    "refund:*",
    "refund <-> kettle",
    "'",
    "\\",
    "%",
    "_",
    "{}",
    "[]",
    ";",
    "--",
    "'; DROP TABLE messages; --",
    "€",
    "🦊",
    "é",
    "日本語",
    "x" * 200,
    "a " * 100,
]


@pytest.mark.parametrize("query", FTS_QUERIES)
async def test_search_takes_fts_syntax_as_text_and_never_fails(suite: Suite, query: str) -> None:
    _, key, chat_id = await _chat(suite)
    await post_message(suite, key, chat_id, "refund for the kettle, OR not; NEAR the door")
    status, answer, _ = await suite.json_call(
        "GET", f"/v1/chats/search?q={quote(query, safe='')}", token=key
    )
    assert status in (200, 400), (query, status, answer)
    if status == 400:
        assert answer["code"] == "invalid_query", (query, answer)
    else:
        assert isinstance(answer.get("messages", []), list)


@pytest.mark.parametrize("query", ["", "   ", "x" * 201, "!!!", "--", "***"])
async def test_search_without_words_is_invalid_query(suite: Suite, query: str) -> None:
    _, key, _ = await _chat(suite)
    status, answer, _ = await suite.json_call(
        "GET", f"/v1/chats/search?q={quote(query, safe='')}", token=key
    )
    assert (status, answer["code"]) == (400, "invalid_query"), query


async def test_search_and_chats_are_the_workspaces_own(suite: Suite) -> None:
    _, key, chat_id = await _chat(suite)
    await post_message(suite, key, chat_id, "apricot")
    other = await owner(suite, "other@example.com")
    status, found, _ = await suite.json_call("GET", "/v1/chats/search?q=apricot", token=other)
    assert (status, found.get("messages", [])) == (200, [])
    status, answer, _ = await suite.json_call(
        "POST", "/v1/chats", json={"visitorId": "vis_" + "f" * 32}, token=key
    )
    assert (status, answer["code"]) == (404, "visitor_not_found")
