"""Endpoint management over real gRPC: create/get/list/update/delete, the bad-input table
(INVALID_ARGUMENT with a stable code and no row, no event), workspace isolation and who may
call."""

from __future__ import annotations

import json
import secrets
from typing import Any

import grpc
import pytest
from sqlalchemy import insert

from palisade.webhooks import signing
from palisade.webhooks.catalogue import EVENT_TYPES, UNPUBLISHED
from palisade.webhooks.tables import endpoints
from palisade_api.webhooks.v1 import webhooks_pb2 as pb

BAD = grpc.StatusCode.INVALID_ARGUMENT
PUBLIC_HOST = "hooks.example.com"  # the harness's fake resolver answers a public address
Harness = Any  # conftest.Harness (importlib mode: conftest is not importable)


def new_workspace() -> str:
    return f"ws_{secrets.token_hex(16)}"


URL = f"https://{PUBLIC_HOST}/hooks?token=s3cr3t-token"


async def test_create_get_list_update_delete(harness: Harness) -> None:
    ws = new_workspace()
    created = await harness.create(
        ws, event_types=("session.login_failed", "chat.message.created"), description="CRM"
    )
    hook = created.webhook
    assert hook.id.startswith("whk_")
    assert len(hook.id) == 36
    assert signing.is_valid_secret(created.secret)
    assert hook.url == URL
    assert list(hook.event_types) == ["chat.message.created", "session.login_failed"]
    assert hook.enabled
    assert hook.disabled_reason == ""
    assert hook.description == "CRM"

    got = await harness.stub.GetWebhook(
        pb.GetWebhookRequest(id=hook.id), metadata=harness.person(ws)
    )
    assert got == hook
    harness.clock.advance(1)
    second = (await harness.create(ws)).webhook
    listed = await harness.stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=harness.person(ws))
    assert [w.id for w in listed.webhooks] == [second.id, hook.id]  # newest first

    updated = await harness.stub.UpdateWebhook(
        pb.UpdateWebhookRequest(id=hook.id, description="CRM v2", enabled=False),
        metadata=harness.person(ws),
    )
    assert updated.description == "CRM v2"
    assert not updated.enabled
    assert updated.disabled_reason == "disabled_by_user"
    assert updated.url == URL  # unset fields stay
    assert list(updated.event_types) == list(hook.event_types)

    await harness.stub.DeleteWebhook(
        pb.DeleteWebhookRequest(id=hook.id), metadata=harness.person(ws)
    )
    await harness.refused(
        harness.stub.GetWebhook(pb.GetWebhookRequest(id=hook.id), metadata=harness.person(ws)),
        grpc.StatusCode.NOT_FOUND,
        "webhook_not_found",
    )
    assert [r.id for r in await harness.endpoint_rows()] == [second.id]
    kinds = [e.event_type for e in await harness.events()]
    assert kinds == ["webhook.created", "webhook.created", "webhook.updated", "webhook.deleted"]


async def test_events_name_the_origin_never_the_path_query_or_secret(harness: Harness) -> None:
    ws = new_workspace()
    created = await harness.create(ws)
    await harness.stub.UpdateWebhook(
        pb.UpdateWebhookRequest(id=created.webhook.id, url=f"https://{PUBLIC_HOST}:8443/x?k=v2"),
        metadata=harness.person(ws),
    )
    events = await harness.events()
    for event in events:
        assert "s3cr3t" not in event.payload
        assert "whsec_" not in event.payload
        assert f"{PUBLIC_HOST}/hooks" not in event.payload
        assert "k=v2" not in event.payload
    first = json.loads(events[0].payload)
    assert first["details"]["url_origin"] == f"https://{PUBLIC_HOST}"
    assert first["details"]["webhook_id"] == created.webhook.id
    assert first["actor"] == "user:usr_alice"
    assert first["workspace_id"] == ws
    assert json.loads(events[1].payload)["details"]["url_origin"] == f"https://{PUBLIC_HOST}:8443"


async def test_the_url_is_stored_encrypted(harness: Harness) -> None:
    await harness.create(new_workspace())
    (row,) = await harness.endpoint_rows()
    assert b"s3cr3t" not in row.url_ct
    assert row.url_origin == f"https://{PUBLIC_HOST}"


def _long_url() -> str:
    return f"https://{PUBLIC_HOST}/" + "a" * 2049


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "invalid_url"),
        ({"url": "hooks.example.com/x"}, "invalid_url"),
        ({"url": "https://user:pass@hooks.example.com/x"}, "invalid_url"),
        ({"url": "https:///x"}, "invalid_url"),
        ({"url": ""}, "invalid_url"),
        ({"url": _long_url()}, "invalid_url"),
        ({"url": "https://inside.example.com/x"}, "url_not_allowed"),  # resolves to 10.0.0.7
        ({"url": "https://loop.example.com/x"}, "url_not_allowed"),  # resolves to 127.0.0.1
        ({"url": "https://169.254.169.254/latest"}, "url_not_allowed"),
        ({"url": "https://[::ffff:10.0.0.1]/x"}, "url_not_allowed"),
        ({"url": "http://hooks.example.com/x"}, "url_not_allowed"),  # plain http, not allowlisted
        ({"url": "https://unknown.example.com/x"}, "url_not_allowed"),  # does not resolve
        ({"event_types": []}, "invalid_event_types"),
        ({"event_types": ["no.such_type"]}, "unknown_event_type"),
        ({"event_types": ["session.refreshed"]}, "unknown_event_type"),  # not published
        ({"event_types": ["chat.message.created"] * 101}, "invalid_event_types"),
        ({"description": "x" * 501}, "invalid_description"),
        ({"description": "bell\x07"}, "invalid_description"),
    ],
)
async def test_bad_input_is_refused_with_its_code_and_no_row(
    harness_sqlite: Harness, fields: dict[str, object], code: str
) -> None:
    harness = harness_sqlite
    harness.resolver.add("inside.example.com", ["10.0.0.7"])
    harness.resolver.add("loop.example.com", ["127.0.0.1"])
    request: dict[str, object] = {"url": URL, "event_types": ["chat.message.created"]}
    request.update(fields)
    await harness.refused(
        harness.stub.CreateWebhook(
            pb.CreateWebhookRequest(**request),  # type: ignore[arg-type]
            metadata=harness.person(new_workspace()),
        ),
        BAD,
        code,
    )
    assert await harness.endpoint_rows() == []
    assert await harness.secret_rows() == []
    assert await harness.events() == []


async def test_update_revalidates_and_changes_nothing_when_refused(harness: Harness) -> None:
    ws = new_workspace()
    harness.resolver.add("inside.example.com", ["10.0.0.7"])
    hook = (await harness.create(ws)).webhook
    for request, code in [
        (pb.UpdateWebhookRequest(id=hook.id, url="https://inside.example.com/"), "url_not_allowed"),
        (pb.UpdateWebhookRequest(id=hook.id, url="gopher://x"), "invalid_url"),
        (pb.UpdateWebhookRequest(id=hook.id, event_types=["nope"]), "unknown_event_type"),
        (pb.UpdateWebhookRequest(id=hook.id, description="y" * 501), "invalid_description"),
    ]:
        await harness.refused(
            harness.stub.UpdateWebhook(request, metadata=harness.person(ws)), BAD, code
        )
    got = await harness.stub.GetWebhook(
        pb.GetWebhookRequest(id=hook.id), metadata=harness.person(ws)
    )
    assert got == hook
    assert [e.event_type for e in await harness.events()] == ["webhook.created"]


async def test_enabling_clears_the_reason_and_the_failure_streak(harness: Harness) -> None:
    ws = new_workspace()
    hook = (await harness.create(ws)).webhook
    assert await harness.server.service.disable(hook.id, "gone")
    assert not await harness.server.service.disable(hook.id, "gone")  # once
    await harness.execute(
        "UPDATE endpoints SET failing_since = created_at WHERE id = :id", id=hook.id
    )
    got = await harness.stub.GetWebhook(
        pb.GetWebhookRequest(id=hook.id), metadata=harness.person(ws)
    )
    assert not got.enabled
    assert got.disabled_reason == "gone"
    enabled = await harness.stub.UpdateWebhook(
        pb.UpdateWebhookRequest(id=hook.id, enabled=True), metadata=harness.person(ws)
    )
    assert enabled.enabled
    assert enabled.disabled_reason == ""
    (row,) = await harness.endpoint_rows()
    assert row.failing_since is None
    assert row.disabled_reason is None
    assert [e.event_type for e in await harness.events()] == [
        "webhook.created",
        "webhook.disabled",
        "webhook.updated",
    ]


async def test_another_workspace_sees_nothing(harness: Harness) -> None:
    ws, other = new_workspace(), new_workspace()
    hook = (await harness.create(ws)).webhook
    them = harness.person(other)
    not_found = grpc.StatusCode.NOT_FOUND
    calls = [
        lambda: harness.stub.GetWebhook(pb.GetWebhookRequest(id=hook.id), metadata=them),
        lambda: harness.stub.UpdateWebhook(
            pb.UpdateWebhookRequest(id=hook.id, description="mine"), metadata=them
        ),
        lambda: harness.stub.UpdateWebhook(
            pb.UpdateWebhookRequest(id=hook.id, url=URL), metadata=them
        ),
        lambda: harness.stub.DeleteWebhook(pb.DeleteWebhookRequest(id=hook.id), metadata=them),
        lambda: harness.stub.RotateWebhookSecret(
            pb.RotateWebhookSecretRequest(id=hook.id), metadata=them
        ),
        lambda: harness.stub.SendTestEvent(pb.SendTestEventRequest(id=hook.id), metadata=them),
        lambda: harness.stub.ListDeliveries(pb.ListDeliveriesRequest(id=hook.id), metadata=them),
    ]
    for call in calls:
        await harness.refused(call(), not_found, "webhook_not_found")
    listed = await harness.stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=them)
    assert list(listed.webhooks) == []
    got = await harness.stub.GetWebhook(
        pb.GetWebhookRequest(id=hook.id), metadata=harness.person(ws)
    )
    assert got == hook
    assert len(await harness.delivery_rows()) == 0
    assert [e.event_type for e in await harness.events()] == ["webhook.created"]


async def test_who_may_manage(harness_sqlite: Harness) -> None:
    harness = harness_sqlite
    ws = new_workspace()
    denied = grpc.StatusCode.PERMISSION_DENIED
    request = pb.ListWebhooksRequest()
    for metadata, code in [
        (harness.person(ws, role="member"), "permission_denied"),
        (harness.key(ws, scopes=("chats:read",)), "insufficient_scope"),
        (harness.key(ws, type="publishable"), "secret_key_required"),
        (harness.signing.marker("gateway", principal="anonymous"), "workspace_required"),
        (harness.key(ws, mode="test"), "live_key_required"),
        (
            harness.signing.marker(
                "gateway",
                principal="apikey:key_nokind",
                workspace_id=ws,
                scopes=["webhooks:manage"],
            ),
            "key_claims_missing",
        ),
    ]:
        await harness.refused(harness.stub.ListWebhooks(request, metadata=metadata), denied, code)
    for metadata in (harness.person(ws, role="admin"), harness.key(ws)):
        await harness.stub.ListWebhooks(request, metadata=metadata)
    created = await harness.stub.CreateWebhook(
        pb.CreateWebhookRequest(url=URL, event_types=["visitor.created"]),
        metadata=harness.key(ws),
    )
    (event,) = await harness.events()
    assert json.loads(event.payload)["actor"].startswith("apikey:key_")
    assert created.webhook.id


async def test_the_catalogue(harness_sqlite: Harness) -> None:
    reply = await harness_sqlite.stub.ListWebhookEventTypes(
        pb.ListWebhookEventTypesRequest(), metadata=harness_sqlite.person(new_workspace())
    )
    types = [t.type for t in reply.event_types]
    assert types == sorted(EVENT_TYPES)
    for wanted in (
        "chat.message.created",
        "session.login_failed",
        "apikey.created",
        "webhook.test",
    ):
        assert wanted in types
    assert not UNPUBLISHED & set(types)
    assert all(t.description for t in reply.event_types)


@pytest.mark.parametrize("bad_id", ["whk_\x00", "x" * 10_000, "whk_" + "G" * 32, ""])
async def test_ids_it_never_issued_are_not_found(harness: Harness, bad_id: str) -> None:
    ws = new_workspace()
    hook = (await harness.create(ws)).webhook
    not_found = grpc.StatusCode.NOT_FOUND
    for call in [
        harness.stub.GetWebhook(pb.GetWebhookRequest(id=bad_id), metadata=harness.person(ws)),
        harness.stub.DeleteWebhook(pb.DeleteWebhookRequest(id=bad_id), metadata=harness.person(ws)),
    ]:
        await harness.refused(call, not_found, "webhook_not_found")
    await harness.refused(
        harness.stub.RetryDelivery(
            pb.RetryDeliveryRequest(id=hook.id, delivery_id=bad_id), metadata=harness.person(ws)
        ),
        not_found,
        "delivery_not_found",
    )


async def test_a_workspace_has_at_most_100_endpoints(harness_sqlite: Harness) -> None:
    harness = harness_sqlite
    ws = new_workspace()
    await harness.create(ws)
    (row,) = await harness.endpoint_rows()
    async with harness.server.engine.begin() as conn:
        for n in range(99):
            copy = dict(row._mapping)
            copy["id"] = f"whk_{n:032x}"
            await conn.execute(insert(endpoints).values(**copy))
    await harness.refused(
        harness.create(ws), grpc.StatusCode.FAILED_PRECONDITION, "webhook_limit_reached"
    )
    assert len(await harness.endpoint_rows()) == 100
    assert len(await harness.events()) == 1
    await harness.create(new_workspace())  # another workspace is not affected
