"""Publishable keys from web pages, end to end: accepted from their allowedOrigins on the routes
that admit them (creating a visitor, starting a chat, posting a message), refused everywhere
else, and CORS answered on those routes only (SECURITY.md 30; docs/api.md, "Publishable keys
in web pages")."""

from __future__ import annotations

import pytest

from .conftest import Suite
from .visitors_support import SHOP, api_key, create_visitor, owner, post_message, start_chat

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

EVIL = "https://evil.example.net"


async def _preflight(suite: Suite, path: str, origin: str, method: str) -> tuple[int, dict]:
    status, headers, _ = await suite.call(
        "OPTIONS",
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    return status, headers


async def test_a_widget_creates_a_visitor_and_talks_from_its_origin(suite: Suite) -> None:
    token = await owner(suite)
    widget = await api_key(suite, token, type="publishable")
    assert widget.startswith("pk_live_")
    status, headers = await _preflight(suite, "/v1/visitors", SHOP, "POST")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert headers["Access-Control-Allow-Methods"] == "POST"
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    assert "Content-Type" in headers["Access-Control-Allow-Headers"]
    status, visitor, headers = await suite.json_call(
        "POST",
        "/v1/visitors",
        json={"name": "Ada", "email": "ada@example.com"},
        token=widget,
        headers={"Origin": SHOP},
    )
    assert status == 201, visitor
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Credentials" not in headers
    chat = await start_chat(suite, widget, visitor["id"], origin=SHOP)
    message = await post_message(suite, widget, chat["id"], "Hi, is anyone there?", origin=SHOP)
    assert message["sender"] == "visitor"
    # The workspace sees what the widget made.
    status, listed, _ = await suite.json_call(
        "GET", f"/v1/chats/{chat['id']}/messages", token=token
    )
    assert [m["body"] for m in listed["messages"]] == ["Hi, is anyone there?"]
    status, same, _ = await suite.json_call("GET", f"/v1/visitors/{visitor['id']}", token=token)
    assert (status, same["email"]) == (200, "ada@example.com")


async def test_a_widget_key_is_refused_from_other_origins_and_on_other_routes(
    suite: Suite,
) -> None:
    token = await owner(suite)
    widget = await api_key(suite, token, type="publishable")
    visitor = await create_visitor(suite, token, name="Ada")
    chat = await start_chat(suite, token, visitor["id"])
    for origin in (EVIL, SHOP + ".evil.net", "http://shop.example.com", "null", None):
        headers = {"Origin": origin} if origin else {}
        for path, body in (
            ("/v1/visitors", {"name": "Eve"}),
            ("/v1/chats", {"visitorId": visitor["id"]}),
            (f"/v1/chats/{chat['id']}/messages", {"body": "spam"}),
        ):
            status, answer, answer_headers = await suite.json_call(
                "POST", path, json=body, token=widget, headers=headers
            )
            assert (status, answer["code"]) == (403, "origin_not_allowed"), (origin, path)
            assert "Access-Control-Allow-Origin" not in answer_headers
    # From its own origin, routes without publishable keys refuse it whatever its scopes:
    # reading (it could not hold visitors:read anyway) and erasing (it holds visitors:write).
    for method, path in (
        ("GET", f"/v1/visitors/{visitor['id']}"),
        ("GET", "/v1/visitors?email=ada%40example.com"),
        ("DELETE", f"/v1/visitors/{visitor['id']}"),
        ("GET", f"/v1/chats/{chat['id']}/messages"),
        ("GET", "/v1/chats/search?q=spam"),
        ("GET", f"/v1/chats/{chat['id']}"),
        ("GET", f"/v1/visitors/{visitor['id']}/chats"),
    ):
        status, answer, headers = await suite.json_call(
            method, path, token=widget, headers={"Origin": SHOP}
        )
        assert (status, answer["code"]) == (403, "secret_key_required"), (method, path)
        assert "Access-Control-Allow-Origin" not in headers
    status, listed, _ = await suite.json_call(
        "GET", f"/v1/chats/{chat['id']}/messages", token=token
    )
    assert listed.get("messages", []) == []  # none of the refused posts landed
    status, same, _ = await suite.json_call("GET", f"/v1/visitors/{visitor['id']}", token=token)
    assert (status, same.get("erased", False)) == (200, False)


async def test_a_widget_without_the_scope_is_told_so_readably(suite: Suite) -> None:
    token = await owner(suite)
    chats_only = await api_key(suite, token, type="publishable", scopes=["chats:write"])
    status, answer, headers = await suite.json_call(
        "POST", "/v1/visitors", json={"name": "Ada"}, token=chats_only, headers={"Origin": SHOP}
    )
    assert (status, answer["code"]) == (403, "insufficient_scope")
    assert headers["Access-Control-Allow-Origin"] == SHOP  # the page can read why
    widget = await api_key(suite, token, type="publishable")
    status, answer, headers = await suite.json_call(
        "POST", "/v1/visitors", json={"email": "nope"}, token=widget, headers={"Origin": SHOP}
    )
    assert (status, answer["code"]) == (400, "invalid_email")
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert "X-Request-Id" in headers["Access-Control-Expose-Headers"]


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/visitors", "POST"),
        ("/v1/chats", "POST"),
        ("/v1/chats/cht_0123/messages", "POST"),
    ],
)
async def test_preflights_are_answered_on_publishable_routes(
    suite: Suite, path: str, method: str
) -> None:
    for origin in (SHOP, EVIL, "http://localhost:5173"):
        status, headers = await _preflight(suite, path, origin, method)
        assert status == 204, (path, origin)
        assert headers["Access-Control-Allow-Origin"] == origin
        assert headers["Access-Control-Max-Age"] == "7200"
        assert "Origin" in headers["Vary"]
        assert "Access-Control-Allow-Credentials" not in headers


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1/api-keys", "POST"),
        ("/v1/api-keys", "GET"),
        ("/v1/visitors/vis_0123", "GET"),
        ("/v1/visitors/vis_0123", "DELETE"),
        ("/v1/visitors", "GET"),
        ("/v1/chats/cht_0123/messages", "GET"),
        ("/v1/chats/search", "GET"),
        ("/v1/chats/cht_0123", "GET"),
        ("/v1/visitors/vis_0123/chats", "GET"),
        ("/v1/me", "GET"),
        ("/v1/auth/login", "POST"),
        ("/v1/whoami", "GET"),
    ],
)
async def test_every_other_preflight_is_refused(suite: Suite, path: str, method: str) -> None:
    status, headers = await _preflight(suite, path, "https://random.example.org", method)
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers


async def test_other_routes_never_answer_a_page(suite: Suite) -> None:
    """Without PALISADE_GATEWAY_CORS_ORIGINS, no answer outside the publishable routes carries
    Access-Control-Allow-Origin, whoever asks from a page."""
    token = await owner(suite)
    key = await api_key(suite, token)
    visitor = await create_visitor(suite, key, name="Ada")
    for credential in (token, key):
        for method, path in (
            ("GET", f"/v1/visitors/{visitor['id']}"),
            ("GET", "/v1/api-keys"),
            ("POST", "/v1/visitors"),  # a publishable route, but not a publishable key
        ):
            _, headers, _ = await suite.call(
                method,
                path,
                token=credential,
                headers={"Origin": SHOP},
                json={"name": "x"} if method == "POST" else None,
            )
            assert "Access-Control-Allow-Origin" not in headers, (method, path)
