"""Webhook endpoints over real HTTP through the gateway: create (201, the secret once),
list/get/patch/delete, the event types, stable 400s with no row, another workspace's ids 404,
scopes, and a test event delivered to a local receiver and verified by standardwebhooks.

Every URL here is an IP literal (never resolved); the allowlist opens loopback only, so
nothing a test registers can be dialled outside 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from palisade.webhooks.tables import outbox_events

from .conftest import Suite
from .visitors_support import api_key, owner
from .waiting import until

PUBLIC_LITERAL = "https://93.184.216.34/hook?token=t0ken"  # registered, never dialled


@pytest.fixture
def webhooks_overrides() -> dict[str, object]:
    return {"allowed_networks": ["127.0.0.0/8"]}


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, asyncio.Queue[tuple[bytes, dict[str, str]]]]]:
    got: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()

    async def handle(request: web.Request) -> web.Response:
        await got.put((await request.read(), dict(request.headers)))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", got
    finally:
        await runner.cleanup()


async def _create(suite: Suite, token: str, **fields: Any) -> tuple[int, Any]:
    body = {"url": PUBLIC_LITERAL, "eventTypes": ["chat.message.created"], **fields}
    status, answer, _ = await suite.json_call("POST", "/v1/webhooks", json=body, token=token)
    return status, answer


async def test_manage_endpoints(suite: Suite) -> None:
    token = await owner(suite)
    status, created = await _create(suite, token, description="CRM")
    assert status == 201, created
    hook = created["webhook"]
    assert created["secret"].startswith("whsec_")
    assert hook["id"].startswith("whk_")
    assert hook["url"] == PUBLIC_LITERAL
    assert hook["eventTypes"] == ["chat.message.created"]
    assert hook["enabled"] is True
    status, got, _ = await suite.json_call("GET", f"/v1/webhooks/{hook['id']}", token=token)
    assert status == 200
    assert got == hook
    status, listed, _ = await suite.json_call("GET", "/v1/webhooks", token=token)
    assert [w["id"] for w in listed["webhooks"]] == [hook["id"]]
    status, patched, _ = await suite.json_call(
        "PATCH", f"/v1/webhooks/{hook['id']}", json={"enabled": False}, token=token
    )
    assert status == 200, patched
    assert patched.get("enabled", False) is False  # proto3 JSON leaves false out
    assert patched["disabledReason"] == "disabled_by_user"
    status, rotated, _ = await suite.json_call(
        "POST", f"/v1/webhooks/{hook['id']}/rotate-secret", json={}, token=token
    )
    assert status == 200, rotated
    assert rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != created["secret"]
    status, types, _ = await suite.json_call("GET", "/v1/webhook-event-types", token=token)
    assert status == 200
    assert "chat.message.created" in [t["type"] for t in types["eventTypes"]]
    status, _, _ = await suite.json_call("DELETE", f"/v1/webhooks/{hook['id']}", token=token)
    assert status == 204
    status, answer, _ = await suite.json_call("GET", f"/v1/webhooks/{hook['id']}", token=token)
    assert (status, answer["code"]) == (404, "webhook_not_found")

    # Its events reached the security log: forwarded, none set aside by audit's validation.
    assert suite.webhooks is not None
    engine = suite.webhooks.engine

    async def forwarded() -> list[Any]:
        async with engine.connect() as conn:
            return list((await conn.execute(select(outbox_events))).all())

    async def all_forwarded() -> bool:
        return all(r.forwarded_at or r.rejected_at for r in await forwarded())

    await until(all_forwarded, within=20)
    rows = await forwarded()
    assert [(r.event_type, r.rejected_code) for r in rows] == [
        ("webhook.created", None),
        ("webhook.updated", None),
        ("webhook.secret_rotated", None),
        ("webhook.deleted", None),
    ]


async def test_bad_input_is_a_stable_400_and_no_row(suite: Suite) -> None:
    token = await owner(suite)
    for fields, code in [
        ({"url": "ftp://93.184.216.34/x"}, "invalid_url"),
        ({"url": "https://u:p@93.184.216.34/x"}, "invalid_url"),
        ({"url": "https://10.0.0.1/x"}, "url_not_allowed"),
        ({"url": "https://169.254.169.254/latest/meta-data"}, "url_not_allowed"),
        ({"url": "http://93.184.216.34/x"}, "url_not_allowed"),
        ({"eventTypes": ["nope.nope"]}, "unknown_event_type"),
        ({"eventTypes": []}, "invalid_event_types"),
        ({"description": "d" * 501}, "invalid_description"),
    ]:
        status, answer = await _create(suite, token, **fields)
        assert (status, answer["code"]) == (400, code), fields
    status, listed, _ = await suite.json_call("GET", "/v1/webhooks", token=token)
    assert listed.get("webhooks", []) == []


async def test_other_workspaces_and_scopes(suite: Suite) -> None:
    mine, theirs = await owner(suite, "a@example.com"), await owner(suite, "b@example.com")
    status, created = await _create(suite, mine)
    assert status == 201
    hook_id = created["webhook"]["id"]
    for method, path in [
        ("GET", f"/v1/webhooks/{hook_id}"),
        ("PATCH", f"/v1/webhooks/{hook_id}"),
        ("DELETE", f"/v1/webhooks/{hook_id}"),
        ("POST", f"/v1/webhooks/{hook_id}/test"),
        ("GET", f"/v1/webhooks/{hook_id}/deliveries"),
    ]:
        json_body = {} if method in ("PATCH", "POST") else None
        status, answer, _ = await suite.json_call(method, path, json=json_body, token=theirs)
        assert (status, answer["code"]) == (404, "webhook_not_found"), (method, path)
    without = await api_key(suite, mine, scopes=["chats:read"])
    status, answer, _ = await suite.json_call("GET", "/v1/webhooks", token=without)
    assert (status, answer["code"]) == (403, "insufficient_scope")
    manager = await api_key(suite, mine, scopes=["webhooks:manage"])
    status, listed, _ = await suite.json_call("GET", "/v1/webhooks", token=manager)
    assert status == 200
    assert [w["id"] for w in listed["webhooks"]] == [hook_id]


async def test_a_test_event_is_delivered_signed(suite: Suite, receiver: Any) -> None:
    url, got = receiver
    token = await owner(suite)
    status, created = await _create(suite, token, url=url, eventTypes=["webhook.test"])
    assert status == 201, created
    hook_id = created["webhook"]["id"]
    status, sent, _ = await suite.json_call(
        "POST", f"/v1/webhooks/{hook_id}/test", json={}, token=token
    )
    assert status == 202, sent
    body, headers = await asyncio.wait_for(got.get(), timeout=30)
    assert headers["webhook-id"] == sent["eventId"]
    payload = Webhook(created["secret"]).verify(body, headers)
    assert payload["type"] == "webhook.test"
    status, log, _ = await suite.json_call("GET", f"/v1/webhooks/{hook_id}/deliveries", token=token)
    assert status == 200
    (delivery,) = log["deliveries"]
    assert delivery["eventId"] == sent["eventId"]
