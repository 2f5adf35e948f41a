"""Review findings on the webhooks service (issue 15 security review), as failing tests.

Receivers listen on 127.0.0.1 only; names are answered by the FakeResolver and sockets made by
the LoopbackOnlyConnector (tests/conftest.py), so nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from palisade.common.outbox import SecurityEvent
from palisade.webhooks import store as store_module
from palisade.webhooks.model import new_endpoint_id
from palisade.webhooks.store import new_delivery_values, queue_delivery
from palisade.webhooks.tables import endpoints
from palisade_api.webhooks.v1 import webhooks_pb2 as pb

from .conftest import new_workspace
from .delivery_support import (
    HANG,
    LOCAL_NETWORKS,
    Receiver,
    delivery_of,
    queue_events,
    receiver,
    runtime_of,
    streamed,
)

LOGIN = "session.login_succeeded"


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    async with receiver() as running:
        yield running


async def test_one_workspace_cannot_take_every_worker_slot(
    webhooks_factory: Any, sqlite_url: str, hooks: Receiver, connector: Any
) -> None:
    """With the defaults (32 slots, 2 per endpoint) 16 endpoints of one workspace on a receiver
    that never answers (100 are allowed) hold every slot for the whole 15 s deadline, round
    after round; here 4 slots and 2 hanging endpoints show the same. Another workspace's
    delivery, due a second later, must still go out while they hang.

    (As first written this waited for 5 requests, 4 hanging ones and the quiet one, which 4
    slots can never have in flight at once: what is asserted is that the quiet delivery goes
    out while the noisy workspace holds its share, and not all, of the slots.)"""
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
        local.clock.advance(timedelta(seconds=1))
        quiet = new_workspace()
        await local.create(quiet, url=hooks.url("/quiet"), event_types=(LOGIN,))
        await queue_events(local, streamed(workspace=quiet))

        runtime = runtime_of(local, connector)
        drain = asyncio.create_task(runtime.worker.drain())
        try:
            # The noisy workspace's share of hanging attempts, and the quiet one's: well
            # before the hanging ones time out.
            await hooks.until(3, within=2.0)
            assert len(hooks.to("/quiet")) == 1
            assert len(hooks.requests) < 1 + 4  # the noisy workspace did not get every slot
        finally:
            await drain


async def test_the_endpoint_limit_holds_for_parallel_creations(
    webhooks_factory: Any, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two creations of one workspace at its last free place. Both count before either
    commits (the outbox write of each waits until the other has got there too, at most 2 s,
    so a store that serialises creations per workspace passes): READ COMMITTED shows each
    the same count, and both insert."""
    async with webhooks_factory(postgres_url) as harness:
        store = harness.server.service.store
        ws = new_workspace()
        meeting = asyncio.Barrier(2)
        real_emit = store_module.emit

        async def emit_after_meeting(*args: Any, **kwargs: Any) -> Any:
            try:
                async with asyncio.timeout(2.0):
                    await meeting.wait()
            except TimeoutError:
                pass  # the other creation is waiting for this one: creations are serialised
            return await real_emit(*args, **kwargs)

        monkeypatch.setattr(store_module, "emit", emit_after_meeting)

        async def create_one() -> bool:
            now = harness.clock.now()
            endpoint_id = new_endpoint_id()
            values = {
                "id": endpoint_id,
                "workspace_id": ws,
                "url_ct": b"sealed-url",
                "url_origin": "https://hooks.example.com",
                "event_types": json.dumps([LOGIN]),
                "description": "",
                "enabled": True,
                "disabled_reason": None,
                "disabled_at": None,
                "failing_since": None,
                "created_at": now,
                "updated_at": now,
            }
            event = SecurityEvent(
                type="webhook.created",
                occurred_at=now,
                actor="user:usr_alice",
                workspace_id=ws,
                details={"webhook_id": endpoint_id},
            )
            return await store.create(values, b"sealed-secret", event, max_per_workspace=1)

        results = await asyncio.gather(create_one(), create_one())
        mine = select(func.count()).select_from(endpoints).where(endpoints.c.workspace_id == ws)
        async with harness.server.engine.connect() as conn:
            count = (await conn.execute(mine)).scalar_one()
        assert sorted(results) == [False, True]
        assert count == 1


async def test_an_unsubscribed_type_is_not_delivered_by_its_retries(
    webhooks_factory: Any, sqlite_url: str, hooks: Receiver, connector: Any
) -> None:
    """A workspace takes the security events off an endpoint (the receiver moved somewhere less
    trusted, say). Deliveries of those events already queued keep their retry schedule and
    reach the receiver afterwards, up to ~27 hours later: events of a type it no longer
    subscribes to. They should be dropped (or failed) instead of sent."""
    async with webhooks_factory(
        sqlite_url, allowed_networks=LOCAL_NETWORKS, delivery_timeout_seconds=2.0
    ) as local:
        ws = new_workspace()
        created = await local.create(
            ws, url=hooks.url("/hook"), event_types=(LOGIN, "chat.message.created")
        )
        hooks.plan("/hook", 503)
        await queue_events(local, streamed(workspace=ws, type=LOGIN))
        runtime = runtime_of(local, connector)
        assert await runtime.worker.drain() == 1  # 503: to be retried in ~5 s
        await local.stub.UpdateWebhook(
            pb.UpdateWebhookRequest(id=created.webhook.id, event_types=["chat.message.created"]),
            metadata=local.person(ws),
        )
        local.clock.advance(timedelta(minutes=10))
        await runtime.worker.drain()
        assert [json.loads(r.body)["type"] for r in hooks.requests] == [LOGIN]


async def test_proxy_variables_in_the_environment_are_not_honoured(
    webhooks_factory: Any,
    sqlite_url: str,
    hooks: Receiver,
    connector: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Checked sound (no xfail): with HTTP(S)_PROXY/ALL_PROXY pointing at a local "proxy" (a
    second receiver), the delivery goes straight to the checked address; the proxy, which
    would dial whatever the Host says and so void the address checks, sees nothing."""
    async with (
        receiver() as proxy,
        webhooks_factory(
            sqlite_url, allowed_networks=LOCAL_NETWORKS, delivery_timeout_seconds=2.0
        ) as local,
    ):
        local.resolver.add("receiver.example", ["127.0.0.1"])
        ws = new_workspace()
        await local.create(
            ws, url=f"http://receiver.example:{hooks.port}/hook", event_types=(LOGIN,)
        )
        await queue_events(local, streamed(workspace=ws))
        # Set only now: gRPC's channels honour these too (their connections are made by now).
        with monkeypatch.context() as env:
            for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
                env.setenv(name, f"http://127.0.0.1:{proxy.port}")
            env.delenv("NO_PROXY", raising=False)
            env.delenv("no_proxy", raising=False)
            runtime = runtime_of(local, connector)
            assert await runtime.worker.drain() == 1
        assert [r.path for r in hooks.requests] == ["/hook"]
        assert proxy.requests == []
        assert connector.dialled == [("127.0.0.1", hooks.port)]


async def test_a_delivery_that_crashes_every_attempt_ends_as_failed(
    webhooks_factory: Any, sqlite_url: str, hooks: Receiver, connector: Any
) -> None:
    """delivery/store.py: "an attempt that crashed still counts (a delivery that crashes its
    worker every time ends as failed instead of looping)". The count is kept, but only a
    settle ever ends a delivery, and a crashing attempt never settles: the row is claimed again
    each time its lease lapses, with no bound. Here the crash is a message id that cannot be
    signed (put in the table directly; the intake never makes one), standing in for any
    exception between the claim and the settle."""
    async with webhooks_factory(
        sqlite_url, allowed_networks=LOCAL_NETWORKS, delivery_timeout_seconds=2.0
    ) as local:
        ws = new_workspace()
        created = await local.create(ws, url=hooks.url("/hook"), event_types=(LOGIN,))
        values = new_delivery_values(
            endpoint_id=created.webhook.id,
            workspace_id=ws,
            event_id="not.signable",
            event_type=LOGIN,
            payload='{"type":"session.login_succeeded","timestamp":"x","data":{}}',
            now=local.clock.now(),
        )
        async with local.server.engine.begin() as conn:
            assert await queue_delivery(conn, values)
        runtime = runtime_of(local, connector)
        schedule_attempts = len(local.settings.retry_schedule) + 1
        for _ in range(schedule_attempts + 3):
            await runtime.worker.drain()
            local.clock.advance(timedelta(seconds=local.settings.claim_lease_seconds + 1))
        row = await delivery_of(local, created.webhook.id, "not.signable")
        assert row.attempts <= schedule_attempts
        assert row.state == "failed"


async def test_an_unreadable_endpoint_shows_in_the_delivery_log(
    webhooks_factory: Any, sqlite_url: str, hooks: Receiver, connector: Any
) -> None:
    """The worker treats every failure to open an endpoint's URL and secrets as crypto being
    away: the claim is released, uncounted, for 5 s. A permanent failure (an envelope that no
    longer opens: a damaged row, a key version gone) then loops every 5 s for ever, a crypto
    call each time, never failing, never disabling the endpoint, with nothing in the delivery
    log to say why. Here the URL's envelope has one byte changed."""
    async with webhooks_factory(
        sqlite_url, allowed_networks=LOCAL_NETWORKS, delivery_timeout_seconds=2.0
    ) as local:
        ws = new_workspace()
        created = await local.create(ws, url=hooks.url("/hook"), event_types=(LOGIN,))
        [row] = [r for r in await local.endpoint_rows() if r.id == created.webhook.id]
        damaged = bytes(row.url_ct[:-1]) + bytes([row.url_ct[-1] ^ 1])
        async with local.server.engine.begin() as conn:
            await conn.execute(
                endpoints.update().where(endpoints.c.id == row.id).values(url_ct=damaged)
            )
        event = streamed(workspace=ws)
        await queue_events(local, event)
        runtime = runtime_of(local, connector)
        for _ in range(10):
            await runtime.worker.drain()
            local.clock.advance(timedelta(seconds=6))
        delivery = await delivery_of(local, created.webhook.id, event.event.id)
        assert hooks.requests == []
        assert delivery.attempts >= 1
        assert delivery.last_error is not None
