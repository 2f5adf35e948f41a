"""Secrets and deliveries over real gRPC with real crypto, on SQLite and Postgres: nothing
secret at rest, rotation's overlap on the injected clock, envelopes bound to their endpoint,
test events, the delivery log's paging, manual retries, deletion dropping deliveries, and
crypto being away."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from datetime import timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import insert, select, update

from palisade.common.errors import PalisadeError
from palisade.webhooks import signing
from palisade.webhooks.model import delivery_body
from palisade.webhooks.store import new_delivery_values, queue_delivery
from palisade.webhooks.tables import deliveries, delivery_attempts, endpoints, metadata
from palisade_api.webhooks.v1 import webhooks_pb2 as pb

Harness = Any  # conftest.Harness (importlib mode: conftest is not importable)
BAD = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
DAY = 86_400


def new_workspace() -> str:
    return f"ws_{secrets.token_hex(16)}"


async def _dump(harness: Harness) -> bytes:
    """Every value of every row of every table, as bytes (what a database dump holds)."""
    out = bytearray()
    async with harness.server.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in await conn.execute(select(table)):
                for value in row:
                    out += value if isinstance(value, bytes) else str(value).encode()
                    out += b"\n"
    return bytes(out)


async def test_no_secret_at_rest(harness: Harness) -> None:
    ws = new_workspace()
    made = [await harness.create(ws) for _ in range(3)]
    rotated = await harness.stub.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(id=made[0].webhook.id), metadata=harness.person(ws)
    )
    dump = await _dump(harness)
    assert len(await harness.secret_rows()) == 4
    for secret in [m.secret for m in made] + [rotated.secret]:
        assert secret.encode() not in dump
        body = secret.removeprefix("whsec_")
        assert body.encode() not in dump
        assert signing.parse_secret(secret) not in dump
        assert base64.urlsafe_b64encode(signing.parse_secret(secret)) not in dump
    assert b"whsec_" not in dump
    assert b"s3cr3t-token" not in dump  # the URL's query


async def test_delivery_target_opens_the_url_and_secret(harness: Harness) -> None:
    created = await harness.create(new_workspace())
    target = await harness.server.service.delivery_target(created.webhook.id)
    assert target is not None
    assert target.url == created.webhook.url
    assert target.secrets == (created.secret,)
    assert target.enabled
    assert await harness.server.service.delivery_target("whk_" + "0" * 32) is None


async def test_rotation_overlaps_then_drops_the_previous_secret(harness: Harness) -> None:
    ws = new_workspace()
    created = await harness.create(ws)
    hook_id = created.webhook.id
    service = harness.server.service
    start = harness.clock.now()
    rotated = await harness.stub.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(id=hook_id), metadata=harness.person(ws)
    )
    assert rotated.secret != created.secret
    assert signing.is_valid_secret(rotated.secret)
    assert rotated.previous_expires_at.ToDatetime().timestamp() == start.timestamp() + DAY
    assert await service.live_secrets(hook_id) == [rotated.secret, created.secret]

    harness.clock.advance(DAY - 1)
    assert await service.live_secrets(hook_id) == [rotated.secret, created.secret]
    # A second rotation in the overlap: the first secret keeps its earlier end.
    third = await harness.stub.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(id=hook_id, overlap_seconds=3600),
        metadata=harness.person(ws),
    )
    assert await service.live_secrets(hook_id) == [third.secret, rotated.secret, created.secret]
    harness.clock.advance(1)
    assert await service.live_secrets(hook_id) == [third.secret, rotated.secret]
    harness.clock.advance(3600)
    assert await service.live_secrets(hook_id) == [third.secret]

    # 0 ends the overlap at once; the expired rows are deleted on the next rotation.
    fourth = await harness.stub.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(id=hook_id, overlap_seconds=0), metadata=harness.person(ws)
    )
    assert await service.live_secrets(hook_id) == [fourth.secret]
    assert len(await harness.secret_rows()) == 1
    kinds = [e.event_type for e in await harness.events()]
    assert kinds.count("webhook.secret_rotated") == 3
    for event in await harness.events():
        assert "whsec_" not in event.payload


@pytest.mark.parametrize("overlap", [-1, 7 * DAY + 1, 2**31 - 1])
async def test_overlap_bounds(harness_sqlite: Harness, overlap: int) -> None:
    harness = harness_sqlite
    ws = new_workspace()
    created = await harness.create(ws)
    await harness.refused(
        harness.stub.RotateWebhookSecret(
            pb.RotateWebhookSecretRequest(id=created.webhook.id, overlap_seconds=overlap),
            metadata=harness.person(ws),
        ),
        BAD,
        "invalid_overlap",
    )
    assert await harness.server.service.live_secrets(created.webhook.id) == [created.secret]


async def test_the_longest_overlap_is_seven_days(harness_sqlite: Harness) -> None:
    harness = harness_sqlite
    ws = new_workspace()
    created = await harness.create(ws)
    await harness.stub.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(id=created.webhook.id, overlap_seconds=7 * DAY),
        metadata=harness.person(ws),
    )
    harness.clock.advance(7 * DAY - 1)
    assert len(await harness.server.service.live_secrets(created.webhook.id)) == 2


async def test_envelopes_are_bound_to_their_endpoint(harness: Harness) -> None:
    ws = new_workspace()
    first, second = await harness.create(ws), await harness.create(ws)
    (row,) = [r for r in await harness.endpoint_rows() if r.id == first.webhook.id]
    async with harness.server.engine.begin() as conn:
        await conn.execute(
            update(endpoints).where(endpoints.c.id == second.webhook.id).values(url_ct=row.url_ct)
        )
    with pytest.raises(PalisadeError):
        await harness.server.service.delivery_target(second.webhook.id)
    await harness.refused(
        harness.stub.GetWebhook(
            pb.GetWebhookRequest(id=second.webhook.id), metadata=harness.person(ws)
        ),
        grpc.StatusCode.INTERNAL,  # tampering: an internal error, not the client's
        "internal",
    )


async def test_a_test_event_queues_one_delivery_for_that_endpoint(harness: Harness) -> None:
    ws = new_workspace()
    hook = (await harness.create(ws, event_types=("webhook.test",))).webhook
    other = (await harness.create(ws, event_types=("webhook.test",))).webhook
    sent = await harness.stub.SendTestEvent(
        pb.SendTestEventRequest(id=hook.id), metadata=harness.person(ws)
    )
    assert sent.event_id.startswith("evt_")
    (row,) = await harness.delivery_rows()
    assert row.endpoint_id == hook.id
    assert row.event_id == sent.event_id
    assert row.event_type == "webhook.test"
    assert row.state == "pending"
    assert row.attempts == 0
    assert row.next_attempt_at == harness.clock.now()
    body = json.loads(row.payload)
    assert list(body) == ["type", "timestamp", "data"]
    assert body["type"] == "webhook.test"
    assert body["timestamp"].endswith("Z")
    assert body["data"]["webhookId"] == hook.id
    assert other.id not in row.payload
    listed = await harness.stub.ListDeliveries(
        pb.ListDeliveriesRequest(id=hook.id), metadata=harness.person(ws)
    )
    (delivery,) = listed.deliveries
    assert delivery.id == row.id
    assert delivery.event_id == sent.event_id
    assert delivery.state == "pending"
    assert not delivery.HasField("last_attempt_at")
    assert listed.next_page_token == ""
    empty = await harness.stub.ListDeliveries(
        pb.ListDeliveriesRequest(id=other.id), metadata=harness.person(ws)
    )
    assert list(empty.deliveries) == []
    # Not in the security log: audit's stream would bring it back to every subscriber.
    assert await harness.events("webhook.test") == []


async def test_a_refed_event_is_queued_once(harness: Harness) -> None:
    hook = (await harness.create(new_workspace())).webhook
    now = harness.clock.now()
    body = delivery_body("chat.message.created", now, {"chatId": "cht_1"})

    async def queue() -> bool:
        values = new_delivery_values(
            endpoint_id=hook.id,
            workspace_id=(await harness.endpoint_rows())[0].workspace_id,
            event_id="evt_same",
            event_type="chat.message.created",
            payload=body,
            now=now,
        )
        async with harness.server.engine.begin() as conn:
            return await queue_delivery(conn, values)

    assert await queue()
    assert not await queue()
    assert len(await harness.delivery_rows()) == 1


async def test_the_delivery_log_pages_newest_first(harness: Harness) -> None:
    ws = new_workspace()
    hook = (await harness.create(ws)).webhook
    other = (await harness.create(ws)).webhook
    sent = []
    for _ in range(5):
        request = pb.SendTestEventRequest(id=hook.id)
        sent.append(
            (await harness.stub.SendTestEvent(request, metadata=harness.person(ws))).event_id
        )
        harness.clock.advance(timedelta(milliseconds=1))
    seen, token = [], ""
    pages = 0
    while True:
        page = await harness.stub.ListDeliveries(
            pb.ListDeliveriesRequest(id=hook.id, page_size=2, page_token=token),
            metadata=harness.person(ws),
        )
        seen += [d.event_id for d in page.deliveries]
        pages += 1
        token = page.next_page_token
        if not token:
            break
        # A token is bound to its endpoint (and workspace): elsewhere it is refused.
        await harness.refused(
            harness.stub.ListDeliveries(
                pb.ListDeliveriesRequest(id=other.id, page_token=token),
                metadata=harness.person(ws),
            ),
            BAD,
            "invalid_page_token",
        )
    assert seen == list(reversed(sent))
    assert pages == 3
    for request, code in [
        (pb.ListDeliveriesRequest(id=hook.id, page_size=101), "invalid_page_size"),
        (pb.ListDeliveriesRequest(id=hook.id, page_size=-1), "invalid_page_size"),
        (pb.ListDeliveriesRequest(id=hook.id, page_token="p1.forged.x"), "invalid_page_token"),
    ]:
        await harness.refused(
            harness.stub.ListDeliveries(request, metadata=harness.person(ws)), BAD, code
        )


async def test_retry_queues_a_delivery_afresh(harness: Harness) -> None:
    ws = new_workspace()
    hook = (await harness.create(ws)).webhook
    other = (await harness.create(ws)).webhook
    sent = await harness.stub.SendTestEvent(
        pb.SendTestEventRequest(id=hook.id), metadata=harness.person(ws)
    )
    (row,) = await harness.delivery_rows()
    later = harness.clock.now() + timedelta(hours=3)
    async with harness.server.engine.begin() as conn:
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.id == row.id)
            .values(
                state="failed",
                attempts=8,
                next_attempt_at=None,
                last_status=500,
                claimed_by="worker-1",
                claimed_until=later,
            )
        )
    harness.clock.advance(60)
    await harness.stub.RetryDelivery(
        pb.RetryDeliveryRequest(id=hook.id, delivery_id=row.id), metadata=harness.person(ws)
    )
    (row,) = await harness.delivery_rows()
    assert row.state == "pending"
    assert row.next_attempt_at == harness.clock.now()
    assert row.event_id == sent.event_id  # the same webhook-id
    assert row.attempts == 8
    assert row.schedule_base == 8  # a new round of the schedule
    assert row.claimed_by is None
    assert row.claimed_until is None
    for endpoint_id, delivery_id in [(other.id, row.id), (hook.id, "dlv_" + "0" * 32)]:
        await harness.refused(
            harness.stub.RetryDelivery(
                pb.RetryDeliveryRequest(id=endpoint_id, delivery_id=delivery_id),
                metadata=harness.person(ws),
            ),
            NOT_FOUND,
            "delivery_not_found",
        )
    await harness.refused(
        harness.stub.RetryDelivery(
            pb.RetryDeliveryRequest(id=hook.id, delivery_id=row.id),
            metadata=harness.person(new_workspace()),
        ),
        NOT_FOUND,
        "webhook_not_found",
    )


async def test_delete_drops_the_endpoints_deliveries(harness: Harness) -> None:
    ws = new_workspace()
    hook = (await harness.create(ws)).webhook
    kept = (await harness.create(ws)).webhook
    for endpoint_id in (hook.id, hook.id, kept.id):
        await harness.stub.SendTestEvent(
            pb.SendTestEventRequest(id=endpoint_id), metadata=harness.person(ws)
        )
    mine = [r.id for r in await harness.delivery_rows() if r.endpoint_id == hook.id]
    async with harness.server.engine.begin() as conn:
        await conn.execute(
            insert(delivery_attempts).values(
                delivery_id=mine[0],
                number=1,
                started_at=harness.clock.now(),
                status=500,
                error=None,
                duration_ms=12,
            )
        )
    assert await harness.server.service.store.pending_count([hook.id]) == 2
    await harness.stub.DeleteWebhook(
        pb.DeleteWebhookRequest(id=hook.id), metadata=harness.person(ws)
    )
    assert {r.endpoint_id for r in await harness.delivery_rows()} == {kept.id}
    assert await harness.rows(delivery_attempts) == []
    assert {r.endpoint_id for r in await harness.secret_rows()} == {kept.id}
    assert await harness.server.service.delivery_target(hook.id) is None


async def test_with_crypto_away_nothing_is_written(harness_sqlite: Harness) -> None:
    harness = harness_sqlite
    ws = new_workspace()
    hook = (await harness.create(ws)).webhook
    await harness.stop_crypto()
    unavailable = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.create(ws)
    assert caught.value.code() == unavailable
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.RotateWebhookSecret(
            pb.RotateWebhookSecretRequest(id=hook.id), metadata=harness.person(ws)
        )
    assert caught.value.code() == unavailable
    assert len(await harness.endpoint_rows()) == 1
    assert len(await harness.secret_rows()) == 1
    assert [e.event_type for e in await harness.events()] == ["webhook.created"]


async def test_parallel_rotations_leave_one_current_secret(harness: Harness) -> None:
    ws = new_workspace()
    created = await harness.create(ws)
    hook_id = created.webhook.id
    answers = await asyncio.gather(
        *(
            harness.stub.RotateWebhookSecret(
                pb.RotateWebhookSecretRequest(id=hook_id, overlap_seconds=600),
                metadata=harness.person(ws),
            )
            for _ in range(10)
        )
    )
    rows = await harness.secret_rows()
    assert len(rows) == 11
    assert sum(1 for r in rows if r.expires_at is None) == 1
    live = await harness.server.service.live_secrets(hook_id)
    assert len(live) == 11
    assert set(live) == {created.secret, *(a.secret for a in answers)}
    harness.clock.advance(601)
    (current,) = await harness.server.service.live_secrets(hook_id)
    assert current in {a.secret for a in answers}
