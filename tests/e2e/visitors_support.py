"""Shared steps of the visitors, chats and publishable-key tests (over real HTTP)."""

from __future__ import annotations

from typing import Any

from .conftest import Suite

SHOP = "https://shop.example.com"
ALL_SCOPES = ["visitors:read", "visitors:write", "chats:read", "chats:write"]


async def owner(suite: Suite, email: str = "owner@example.com") -> str:
    """A new workspace's owner, signed in: their access token."""
    return str((await suite.sign_up_and_log_in(email))["accessToken"])


async def api_key(
    suite: Suite,
    token: str,
    *,
    type: str = "secret",
    scopes: list[str] | None = None,
    mode: str = "live",
    origins: list[str] | None = None,
) -> str:
    """A new key of the owner's workspace (publishable keys: visitors:write and chats:write
    from SHOP unless told otherwise)."""
    body: dict[str, Any] = {"name": f"{type} {mode}", "type": type, "mode": mode}
    if type == "publishable":
        body["scopes"] = scopes or ["visitors:write", "chats:write"]
        body["allowedOrigins"] = origins or [SHOP]
    else:
        body["scopes"] = scopes or ALL_SCOPES
    status, answer, _ = await suite.json_call("POST", "/v1/api-keys", json=body, token=token)
    assert status == 201, answer
    return str(answer["key"])


async def create_visitor(
    suite: Suite, credential: str, *, origin: str | None = None, **fields: str
) -> dict[str, Any]:
    headers = {"Origin": origin} if origin else None
    status, body, _ = await suite.json_call(
        "POST", "/v1/visitors", json=fields, token=credential, headers=headers
    )
    assert status == 201, body
    return dict(body)


async def start_chat(
    suite: Suite, credential: str, visitor_id: str, *, origin: str | None = None
) -> dict[str, Any]:
    headers = {"Origin": origin} if origin else None
    status, body, _ = await suite.json_call(
        "POST", "/v1/chats", json={"visitorId": visitor_id}, token=credential, headers=headers
    )
    assert status == 201, body
    return dict(body)


async def post_message(
    suite: Suite, credential: str, chat_id: str, text: str, *, origin: str | None = None
) -> dict[str, Any]:
    headers = {"Origin": origin} if origin else None
    status, body, _ = await suite.json_call(
        "POST",
        f"/v1/chats/{chat_id}/messages",
        json={"body": text},
        token=credential,
        headers=headers,
    )
    assert status == 201, body
    return dict(body)


async def find(suite: Suite, credential: str, query: str) -> list[dict[str, Any]]:
    """GET /v1/visitors?<query> (already URL-encoded): the visitors found."""
    status, body, _ = await suite.json_call("GET", f"/v1/visitors?{query}", token=credential)
    assert status == 200, (query, body)
    return list(body.get("visitors", []))
