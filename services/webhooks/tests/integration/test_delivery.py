"""The delivery worker against real local receivers: signatures, retries with the same
webhook-id, 410, Retry-After, timeouts that block no one else, the failing-for-5-days disable.

Endpoints are made through the real API (crypto seals their URL and secret), deliveries queued
by the intake's fan-out, and the worker driven with drain() under a ManualClock: no test
sleeps for a time rule.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from standardwebhooks import Webhook

from palisade.webhooks.egress.client import USER_AGENT
from palisade.webhooks.signing import verify
from palisade_api.webhooks.v1 import webhooks_pb2 as pb

from .conftest import new_workspace
from .delivery_support import (
    HANG,
    LOCAL_NETWORKS,
    Receiver,
    attempts_of,
    delivery_of,
    endpoint_row,
    queue_events,
    receiver,
    runtime_of,
    sample,
    streamed,
)

LOGIN = "session.login_succeeded"


@pytest.fixture
async def local(webhooks_factory: Any, database_url: str) -> AsyncIterator[Any]:
    async with webhooks_factory(
        database_url, allowed_networks=LOCAL_NETWORKS, delivery_timeout_seconds=2.0
    ) as running:
        yield running


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    async with receiver() as running:
        yield running


async def endpoint(harness: Any, hooks: Receiver, ws: str, path: str = "/hook") -> Any:
    return await harness.create(ws, url=hooks.url(path), event_types=(LOGIN,))


async def test_a_delivery_is_signed_per_standard_webhooks(local, hooks, connector) -> None:
    ws = new_workspace()
    created = await endpoint(local, hooks, ws)
    event = streamed(workspace=ws)
    assert await queue_events(local, event) == 1
    runtime = runtime_of(local, connector)
    assert await runtime.worker.drain() == 1
    [got] = hooks.requests
    # The receiver's library verifies it (and so the body is exactly what was signed).
    body = Webhook(created.secret).verify(got.body, got.headers)
    assert got.headers["webhook-id"] == event.event.id
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == USER_AGENT
    assert set(body) == {"type", "timestamp", "data"}
    assert body["type"] == LOGIN
    assert body["data"]["id"] == event.event.id
    assert body["data"]["actor"] == {"type": "user", "id": "usr_alice"}
    assert body["data"]["details"] == {"method": "password"}
    for pii in ("ip", "userAgent", "user_agent", "device", "location"):
        assert pii not in body["data"]
    row = await delivery_of(local, created.webhook.id, event.event.id)
    assert (row.state, row.attempts, row.last_status, row.claimed_by) == ("succeeded", 1, 200, None)
    [attempt] = await attempts_of(local, row.id)
    assert (attempt.number, attempt.status, attempt.error) == (1, 200, None)
    assert sample(runtime.registry, "palisade_webhooks_deliveries_total", outcome="succeeded") == 1
    assert sample(runtime.registry, "palisade_webhooks_attempt_seconds_count") == 1
    # Nothing more is due: a second pass sends nothing.
    assert await runtime.worker.drain() == 0
    assert len(hooks.requests) == 1


async def test_during_a_rotation_both_secrets_verify(local, hooks, connector) -> None:
    ws = new_workspace()
    created = await endpoint(local, hooks, ws)
    rotated = await local.stub.RotateWebhookSecret(
        pb.RotateWebhookSecretRequest(id=created.webhook.id), metadata=local.person(ws)
    )
    await queue_events(local, streamed(workspace=ws))
    await runtime_of(local, connector).worker.drain()
    [got] = hooks.requests
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (created.secret, rotated.secret):
        Webhook(secret).verify(got.body, got.headers)


async def test_failing_twice_then_succeeding_keeps_the_webhook_id(local, hooks, connector) -> None:
    ws = new_workspace()
    created = await endpoint(local, hooks, ws)
    hooks.plan("/hook", 500, 503)
    event = streamed(workspace=ws)
    await queue_events(local, event)
    runtime = runtime_of(local, connector)
    assert await runtime.worker.drain() == 1
    row = await delivery_of(local, created.webhook.id, event.event.id)
    assert (row.state, row.attempts, row.last_status) == ("pending", 1, 500)
    wait = (row.next_attempt_at - local.clock.now()).total_seconds()
    assert 5 * 0.8 <= wait <= 5 * 1.2  # the first wait of the schedule, jittered
    failing = (await endpoint_row(local, created.webhook.id)).failing_since
    assert failing == local.clock.now()
    assert await runtime.worker.drain() == 0  # not due yet: nothing sent
    local.clock.advance(6)
    await runtime.refresh_gauges()
    assert sample(runtime.registry, "palisade_webhooks_queue_depth") == 1
    assert sample(runtime.registry, "palisade_webhooks_oldest_pending_seconds") == 6
    assert await runtime.worker.drain() == 1
    row = await delivery_of(local, created.webhook.id, event.event.id)
    assert (row.state, row.last_status) == ("pending", 503)
    local.clock.advance(300 * 1.2 + 1)
    assert await runtime.worker.drain() == 1
    ids = {r.headers["webhook-id"] for r in hooks.requests}
    assert ids == {event.event.id}
    assert len({r.headers["webhook-timestamp"] for r in hooks.requests}) == 3
    last = hooks.requests[-1]
    # Signed at the attempt's time (the ManualClock's, minutes ahead of the wall clock).
    assert verify(
        [created.secret],
        msg_id=last.headers["webhook-id"],
        timestamp=last.headers["webhook-timestamp"],
        body=last.body,
        signature_header=last.headers["webhook-signature"],
        now=local.clock.timestamp(),
    )
    row = await delivery_of(local, created.webhook.id, event.event.id)
    assert (row.state, row.attempts, row.next_attempt_at) == ("succeeded", 3, None)
    assert [a.status for a in await attempts_of(local, row.id)] == [500, 503, 200]
    await runtime.refresh_gauges()
    assert sample(runtime.registry, "palisade_webhooks_queue_depth") == 0
    assert sample(runtime.registry, "palisade_webhooks_oldest_pending_seconds") == 0
    # A success ends the endpoint's failure streak.
    assert (await endpoint_row(local, created.webhook.id)).failing_since is None
    assert sample(runtime.registry, "palisade_webhooks_deliveries_total", outcome="retrying") == 2


async def test_410_disables_the_endpoint_at_once(local, hooks, connector) -> None:
    ws = new_workspace()
    created = await endpoint(local, hooks, ws)
    hooks.plan("/hook", 410)
    first, second = streamed(workspace=ws), streamed(workspace=ws)
    await queue_events(local, first)
    runtime = runtime_of(local, connector)
    await runtime.worker.drain()
    row = await endpoint_row(local, created.webhook.id)
    assert (row.enabled, row.disabled_reason) == (False, "gone")
    assert (await delivery_of(local, created.webhook.id, first.event.id)).state == "failed"
    [disabled] = await local.events("webhook.disabled")
    assert json.loads(disabled.payload)["details"]["reason"] == "gone"
    disabled_total = "palisade_webhooks_endpoints_disabled_total"
    assert sample(runtime.registry, disabled_total, reason="gone") == 1
    # A disabled endpoint gets nothing more, however long one waits.
    assert await queue_events(local, second) == 0  # the intake skips disabled endpoints
    local.clock.advance(3600)
    assert await runtime.worker.drain() == 0
    assert len(hooks.requests) == 1
    await runtime.refresh_gauges()
    assert sample(runtime.registry, "palisade_webhooks_disabled_endpoints") == 1


async def test_retry_after_is_honoured_when_longer(local, hooks, connector) -> None:
    ws = new_workspace()
    created = await endpoint(local, hooks, ws)
    hooks.plan("/hook", (503, {"Retry-After": "120"}), (429, {"Retry-After": "0"}))
    event = streamed(workspace=ws)
    await queue_events(local, event)
    runtime = runtime_of(local, connector)
    await runtime.worker.drain()
    row = await delivery_of(local, created.webhook.id, event.event.id)
    assert row.next_attempt_at == local.clock.now() + timedelta(seconds=120)
    local.clock.advance(119)
    assert await runtime.worker.drain() == 0
    local.clock.advance(1)
    assert await runtime.worker.drain() == 1
    # "Retry-After: 0" does not shorten the schedule's second wait (5 minutes).
    row = await delivery_of(local, created.webhook.id, event.event.id)
    wait = (row.next_attempt_at - local.clock.now()).total_seconds()
    assert 300 * 0.8 <= wait <= 300 * 1.2


async def test_retry_after_is_capped_on_the_rounds_whole_span(local, hooks, connector) -> None:
    """A receiver answering every attempt with a day's Retry-After: the first wait is a day,
    the second what is left of the schedule's span from the round's first attempt, and the
    attempt at the span's end ends the delivery (not six days of one-day waits)."""
    ws = new_workspace()
    created = await endpoint(local, hooks, ws)
    day = (429, {"Retry-After": "86400"})
    hooks.plan("/hook", day, day, day, day)
    event = streamed(workspace=ws)
    await queue_events(local, event)
    runtime = runtime_of(local, connector)
    first = local.clock.now()
    span = timedelta(seconds=sum(local.settings.retry_schedule))
    assert await runtime.worker.drain() == 1
    row = await delivery_of(local, created.webhook.id, event.event.id)
    assert row.next_attempt_at == first + timedelta(days=1)
    local.clock.advance(timedelta(days=1))
    assert await runtime.worker.drain() == 1
    row = await delivery_of(local, created.webhook.id, event.event.id)
    assert row.next_attempt_at == first + span
    local.clock.advance(row.next_attempt_at - local.clock.now())
    assert await runtime.worker.drain() == 1
    row = await delivery_of(local, created.webhook.id, event.event.id)
    assert (row.state, row.attempts, row.next_attempt_at) == ("failed", 3, None)
    assert len(hooks.requests) == 3


async def test_a_hanging_receiver_blocks_no_other_endpoint(local, hooks, connector) -> None:
    ws = new_workspace()
    slow = await endpoint(local, hooks, ws, "/slow")
    fast = await endpoint(local, hooks, ws, "/fast")
    hooks.plan("/slow", HANG, HANG, HANG)
    events = [streamed(workspace=ws) for _ in range(3)]
    await queue_events(local, *events)  # each event to both endpoints
    runtime = runtime_of(local, connector)
    await runtime.worker.drain()
    slow_started = hooks.to("/slow")[0].at
    fast_arrivals = [r.at for r in hooks.to("/fast")]
    assert len(fast_arrivals) == 3
    # Every fast delivery arrived while the first slow attempt was still hanging.
    assert all(at - slow_started < local.settings.delivery_timeout_seconds for at in fast_arrivals)
    # The slow endpoint never had more than its per-endpoint share (2) in flight: its third
    # attempt started only once one of the first two had timed out.
    assert local.settings.per_endpoint_concurrency == 2
    slow_arrivals = sorted(r.at for r in hooks.to("/slow"))
    assert len(slow_arrivals) == 3
    assert slow_arrivals[2] - slow_arrivals[0] >= local.settings.delivery_timeout_seconds * 0.9
    for item in events:
        row = await delivery_of(local, slow.webhook.id, item.event.id)
        assert (row.state, row.last_error, row.last_status) == ("pending", "timeout", None)
        assert (await delivery_of(local, fast.webhook.id, item.event.id)).state == "succeeded"
    assert sample(runtime.registry, "palisade_webhooks_attempts_total", result="timeout") == 3


async def test_one_workspace_holds_at_most_its_share_of_the_slots(
    webhooks_factory, sqlite_url, hooks, connector
) -> None:
    """4 slots, 2 per endpoint: a workspace with two hanging endpoints gets 2 slots (a
    quarter of them, but at least one endpoint's), and another workspace's delivery goes out
    at once beside them."""
    async with webhooks_factory(
        sqlite_url,
        allowed_networks=LOCAL_NETWORKS,
        delivery_timeout_seconds=4.0,
        worker_concurrency=4,
        per_endpoint_concurrency=2,
    ) as local:
        noisy = new_workspace()
        for path in ("/noisy-1", "/noisy-2"):
            await local.create(noisy, url=hooks.url(path), event_types=(LOGIN,))
            hooks.plan(path, HANG, HANG)
        await queue_events(local, *(streamed(workspace=noisy) for _ in range(2)))
        local.clock.advance(1)
        quiet = new_workspace()
        await local.create(quiet, url=hooks.url("/quiet"), event_types=(LOGIN,))
        await queue_events(local, streamed(workspace=quiet))
        runtime = runtime_of(local, connector)
        drain = asyncio.create_task(runtime.worker.drain())
        try:
            await hooks.until(3, within=2.0)  # well before the hanging ones time out
            assert len(hooks.to("/quiet")) == 1
            assert len(hooks.requests) == 3  # the noisy workspace: 2 slots of 4
        finally:
            await drain
        # Once those timed out, the noisy workspace's other two went too.
        assert len(hooks.requests) == 5


async def test_the_per_workspace_share_is_a_setting(
    webhooks_factory, sqlite_url, hooks, connector
) -> None:
    """per_workspace_concurrency=1: of a workspace's two hanging endpoints only one attempt is
    in flight, whatever the per-endpoint and total slots would allow."""
    async with webhooks_factory(
        sqlite_url,
        allowed_networks=LOCAL_NETWORKS,
        delivery_timeout_seconds=2.0,
        worker_concurrency=8,
        per_endpoint_concurrency=2,
        per_workspace_concurrency=1,
    ) as local:
        noisy = new_workspace()
        for path in ("/noisy-1", "/noisy-2"):
            await local.create(noisy, url=hooks.url(path), event_types=(LOGIN,))
            hooks.plan(path, HANG)
        await queue_events(local, streamed(workspace=noisy))
        local.clock.advance(1)
        quiet = new_workspace()
        await local.create(quiet, url=hooks.url("/quiet"), event_types=(LOGIN,))
        await queue_events(local, streamed(workspace=quiet))
        runtime = runtime_of(local, connector)
        drain = asyncio.create_task(runtime.worker.drain())
        try:
            await hooks.until(2, within=1.5)
            assert len(hooks.to("/quiet")) == 1
            assert len(hooks.requests) == 2  # one noisy attempt, not two
        finally:
            await drain
        assert len(hooks.requests) == 3
