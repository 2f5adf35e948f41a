"""The worker across crashes and replicas, and the failing-for-5-days disable with its email.

- a service killed mid-attempt (its lease left behind) and restarted over the same database
  still delivers, with the same webhook-id, once the lease has run out;
- two workers (two engines, as two processes would have) draining one queue never send one
  attempt twice;
- an endpoint whose every attempt failed for 5 days is disabled ("failing") and its owners
  are emailed once, through SendNotice on a gRPC server that checks the webhooks->auth
  assertion as auth does.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from palisade.common.caller import AssertionVerifier, require_service_caller
from palisade.common.db import create_engine, resolve_database_url
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_server import run_server
from palisade.common.settings import CommonSettings
from palisade.crypto.config import CryptoSettings
from palisade.webhooks.delivery.notices import disabled_notices
from palisade.webhooks.tables import delivery_attempts
from palisade_api.auth.v1 import auth_pb2, auth_pb2_grpc

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
SETTINGS = {"allowed_networks": LOCAL_NETWORKS, "delivery_timeout_seconds": 2.0}


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    async with receiver() as running:
        yield running


async def test_killed_mid_attempt_delivers_after_a_restart(
    webhooks_factory, database_url, hooks, connector
) -> None:
    ws = new_workspace()
    hooks.plan("/hook", 500, HANG)
    event = streamed(workspace=ws)
    async with webhooks_factory(database_url, **SETTINGS) as first:
        created = await first.create(ws, url=hooks.url(), event_types=(LOGIN,))
        await queue_events(first, event)
        runtime = runtime_of(first, connector)
        await runtime.worker.drain()  # attempt 1: 500, retry in about 5 s
        first.clock.advance(6)
        worker = asyncio.create_task(runtime.worker.run())
        await hooks.until(2)  # attempt 2 is hanging
        worker.cancel()  # the process dies mid-attempt
        await asyncio.gather(worker, return_exceptions=True)
        row = await delivery_of(first, created.webhook.id, event.event.id)
        assert (row.state, row.attempts) == ("pending", 2)
        assert row.claimed_until is not None  # the dead worker's lease is still there
        stopped_at = first.clock.now()
    async with webhooks_factory(database_url, **SETTINGS) as second:
        second.clock.set(stopped_at)
        runtime = runtime_of(second, connector, worker_id="restarted")
        assert await runtime.worker.drain() == 0  # the lease has not run out yet
        second.clock.advance(second.settings.claim_lease_seconds + 1)
        assert await runtime.worker.drain() == 1
        ids = [r.headers["webhook-id"] for r in hooks.requests]
        assert ids == [event.event.id] * 3
        row = await delivery_of(second, created.webhook.id, event.event.id)
        assert (row.state, row.attempts) == ("succeeded", 3)
        # The crashed attempt (2) left no record; the two that finished did.
        assert [(a.number, a.status) for a in await attempts_of(second, row.id)] == [
            (1, 500),
            (3, 200),
        ]


async def test_two_workers_never_send_one_attempt_twice(
    webhooks_factory, database_url, hooks, connector, tmp_path
) -> None:
    hooks.delay_seconds = 0.005  # long enough for the two to overlap
    async with webhooks_factory(database_url, **SETTINGS) as harness:
        ws = new_workspace()
        for n in range(4):
            await harness.create(ws, url=hooks.url(f"/e{n}"), event_types=(LOGIN,))
        events = [streamed(workspace=ws) for _ in range(15)]
        assert await queue_events(harness, *events) == 60
        other_engine = create_engine(
            resolve_database_url(
                harness.settings.database_url, data_dir=tmp_path, service="webhooks"
            )
        )
        try:
            one = runtime_of(harness, connector, worker_id="one")
            two = runtime_of(harness, connector, engine=other_engine, worker_id="two")
            done = await asyncio.gather(one.worker.drain(), two.worker.drain())
        finally:
            await other_engine.dispose()
        sent = Counter((r.path, r.headers["webhook-id"]) for r in hooks.requests)
        assert len(sent) == 60
        assert set(sent.values()) == {1}
        assert sum(done) == 60
        async with harness.server.engine.connect() as conn:
            numbers = (await conn.execute(select(delivery_attempts.c.number))).scalars().all()
        assert sorted(numbers) == [1] * 60


class RecordingAuth(auth_pb2_grpc.AuthServiceServicer):
    """SendNotice as webhooks sees it: only service:webhooks, deduplicated by key."""

    def __init__(self) -> None:
        self.notices: list[auth_pb2.SendNoticeRequest] = []
        self.keys: set[str] = set()

    async def SendNotice(self, request: Any, context: Any) -> Any:
        caller = require_service_caller()
        assert caller.principal == "service:webhooks"
        if request.idempotency_key not in self.keys:
            self.keys.add(request.idempotency_key)
            self.notices.append(request)
        return auth_pb2.SendNoticeResponse(recipients=1)


async def test_failing_for_five_days_disables_and_emails_the_owners(
    webhooks_factory, database_url, hooks, connector, tmp_path
) -> None:
    hooks.plan("/hook", *([500] * 50))
    recording = RecordingAuth()

    def add(server: grpc.aio.Server) -> list[str]:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(recording, server)
        return [auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name]

    async with webhooks_factory(database_url, **SETTINGS) as harness:
        master = read_document(CryptoSettings(data_dir=tmp_path).resolved_edge_keys_master_file())
        async with run_server(
            name="auth",
            settings=CommonSettings(data_dir=tmp_path, grpc_port=0, metrics_port=0),
            verifier=AssertionVerifier(
                keys=KeySource.from_master(master, "auth"), clock=harness.clock
            ),
            registry=CollectorRegistry(),
            add_servicers=add,
        ) as auth:
            channel = grpc.aio.insecure_channel(auth.target)
            try:
                runtime = runtime_of(harness, connector, auth_channel=channel)
                ws = new_workspace()
                created = await harness.create(ws, url=hooks.url(), event_types=(LOGIN,))
                await queue_events(harness, streamed(workspace=ws))
                await runtime.worker.drain()
                started = harness.clock.now()
                assert (await endpoint_row(harness, created.webhook.id)).failing_since == started
                # Just short of 5 days of failures: still enabled.
                harness.clock.advance(timedelta(days=5) - timedelta(seconds=1))
                await queue_events(harness, streamed(workspace=ws))
                await runtime.worker.drain()
                assert (await endpoint_row(harness, created.webhook.id)).enabled
                harness.clock.advance(1)
                await queue_events(harness, streamed(workspace=ws))
                await runtime.worker.drain()
                row = await endpoint_row(harness, created.webhook.id)
                assert (row.enabled, row.disabled_reason) == (False, "failing")
                assert len(await harness.events("webhook.disabled")) == 1
                assert await runtime.notices.sweep() == 1
                [notice] = recording.notices
                assert notice.kind == "webhook_disabled"
                assert notice.workspace_id == ws
                assert list(notice.roles) == ["owner"]
                assert notice.details["webhook_id"] == created.webhook.id
                assert notice.details["url_origin"] == hooks.url("")
                assert "hook" not in notice.details["url_origin"]  # never the full URL
                # Sent once: a later sweep owes nothing.
                assert await runtime.notices.sweep() == 0
                async with harness.server.engine.connect() as conn:
                    [recorded] = (await conn.execute(select(disabled_notices))).all()
                assert recorded.result == "sent"
                failing = "palisade_webhooks_endpoints_disabled_total"
                assert sample(runtime.registry, failing, reason="failing") == 1
            finally:
                await channel.close()
