"""The intake against a real audit service (and real crypto): events ingested into the
security log reach the right endpoints only, once each, resumed from the stored cursor after
the intake or audit restarts.

Audit runs with its default subscriber list (webhooks) and a stand-in for auth's workspace
directory (it verifies the audit->auth assertion as auth does); events are ingested as
service:auth, and the intake streams as service:webhooks over the webhooks->audit edge.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from deferred_signing import DeferredSigning
from google.protobuf.timestamp_pb2 import Timestamp
from ports import port_for_later
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from palisade.audit.config import AuditSettings
from palisade.audit.server import serve_audit
from palisade.common.caller import AssertionSigner, AssertionVerifier, require_service_caller
from palisade.common.edge_keys import KeyDocument, KeySource, read_document
from palisade.common.grpc_server import run_server
from palisade.common.settings import CommonSettings
from palisade.crypto.config import CryptoSettings
from palisade.webhooks.tables import deliveries, stream_cursor
from palisade_api.audit.v1 import audit_pb2, audit_pb2_grpc
from palisade_api.auth.v1 import directory_pb2, directory_pb2_grpc
from palisade_api.webhooks.v1 import webhooks_pb2 as pb

from .conftest import new_workspace
from .delivery_support import LOCAL_NETWORKS, runtime_of

LOGIN, LOGOUT, SIGNED_UP = "session.login_succeeded", "session.logout", "user.signed_up"


class Directory(directory_pb2_grpc.DirectoryServiceServicer):
    """Auth's workspace directory as audit sees it: every workspace the test made exists."""

    def __init__(self) -> None:
        self.workspaces: set[str] = set()

    async def CheckWorkspaces(self, request: Any, context: Any) -> Any:
        assert require_service_caller().principal == "service:audit"
        return directory_pb2.CheckWorkspacesResponse(
            existing_workspace_ids=[w for w in request.workspace_ids if w in self.workspaces]
        )


@dataclass
class Audit:
    stub: audit_pb2_grpc.AuditServiceStub
    signing: DeferredSigning
    directory: Directory
    target: str

    def workspace(self) -> str:
        created = new_workspace()
        self.directory.workspaces.add(created)
        return created

    async def ingest(self, workspace: str, type: str = LOGIN) -> str:
        moment = Timestamp()
        moment.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
        event_id = uuid.uuid4().hex
        await self.stub.Ingest(
            audit_pb2.IngestRequest(
                events=[
                    audit_pb2.IngestEvent(
                        event_id=event_id,
                        type=type,
                        occurred_at=moment,
                        workspace_id=workspace,
                        actor="user:usr_alice",
                        subject="user:usr_alice",
                        ip="198.51.100.7",
                        user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Firefox/120.0",
                        outcome="success",
                        details={"method": "password"},
                    )
                ]
            ),
            metadata=self.signing.marker("auth"),
        )
        return event_id


def _free_port() -> int:
    """A port for a server started later: below the ephemeral range, so no client
    connection takes it first (ports.port_for_later)."""
    return port_for_later()


@asynccontextmanager
async def audit_service(
    harness: Any, tmp_path: Path, *, port: int, directory: Directory
) -> AsyncIterator[Audit]:
    master: KeyDocument = read_document(
        CryptoSettings(data_dir=tmp_path).resolved_edge_keys_master_file()
    )

    def add(server: grpc.aio.Server) -> list[str]:
        directory_pb2_grpc.add_DirectoryServiceServicer_to_server(directory, server)
        return [directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name]

    async with AsyncExitStack() as stack:
        auth = await stack.enter_async_context(
            run_server(
                name="auth",
                settings=CommonSettings(data_dir=tmp_path, grpc_port=0, metrics_port=0),
                verifier=AssertionVerifier(
                    keys=KeySource.from_master(master, "auth"), clock=harness.clock
                ),
                registry=CollectorRegistry(),
                add_servicers=add,
            )
        )
        settings = AuditSettings(
            data_dir=tmp_path,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}",
            crypto_target=harness.crypto.running.target,
            auth_target=auth.target,
            grpc_port=port,
            metrics_port=0,
            shutdown_grace_seconds=0.2,
            stream_poll_seconds=0.05,
        )
        server = await stack.enter_async_context(
            serve_audit(settings, clock=harness.clock, background=False)
        )
        signing = DeferredSigning(
            audience="audit",
            signer_for=lambda issuer: AssertionSigner(
                keys=KeySource.from_master(master, issuer), clock=harness.clock, ttl_seconds=60
            ),
        )
        channel = await stack.enter_async_context(signing.channel(server.running.target))
        yield Audit(
            audit_pb2_grpc.AuditServiceStub(channel), signing, directory, server.running.target
        )


@pytest.fixture
async def local(webhooks_factory: Any, database_url: str) -> AsyncIterator[Any]:
    async with webhooks_factory(
        database_url, allowed_networks=LOCAL_NETWORKS, stream_retry_seconds=0.05
    ) as running:
        yield running


async def _endpoint(harness: Any, ws: str, *types: str, enabled: bool = True) -> str:
    created = await harness.create(ws, url="http://127.0.0.1:9/hook", event_types=types)
    if not enabled:
        await harness.stub.UpdateWebhook(
            pb.UpdateWebhookRequest(id=created.webhook.id, enabled=False),
            metadata=harness.person(ws),
        )
    return str(created.webhook.id)


async def _queued(harness: Any) -> dict[str, set[str]]:
    """Per endpoint, the event ids queued for it."""
    async with harness.server.engine.connect() as conn:
        rows = (await conn.execute(select(deliveries.c.endpoint_id, deliveries.c.event_id))).all()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row.endpoint_id, set()).add(row.event_id)
    return found


@asynccontextmanager
async def running_intake(harness: Any, audit: Audit, connector: Any) -> AsyncIterator[Any]:
    channel = grpc.aio.insecure_channel(audit.target)
    runtime = runtime_of(harness, connector, audit_channel=channel)
    task = asyncio.create_task(runtime.intake.run())
    try:
        await asyncio.wait_for(runtime.intake.connected.wait(), timeout=10)
        yield runtime.intake
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.close()


async def test_events_reach_the_right_endpoints_only(local, tmp_path, connector) -> None:
    async with audit_service(local, tmp_path, port=0, directory=Directory()) as audit:
        ws, other = audit.workspace(), audit.workspace()
        logins = await _endpoint(local, ws, LOGIN)
        both = await _endpoint(local, ws, LOGIN, LOGOUT)
        disabled = await _endpoint(local, ws, LOGIN, enabled=False)
        elsewhere = await _endpoint(local, other, LOGIN)
        async with running_intake(local, audit, connector) as intake:
            login = await audit.ingest(ws, LOGIN)
            logout = await audit.ingest(ws, LOGOUT)
            unsubscribed = await audit.ingest(ws, SIGNED_UP)
            other_login = await audit.ingest(other, LOGIN)
            await asyncio.wait_for(intake.until_committed(4), timeout=10)
        queued = await _queued(local)
        assert queued == {
            logins: {login},
            both: {login, logout},
            elsewhere: {other_login},
        }
        assert disabled not in queued
        assert all(unsubscribed not in ids for ids in queued.values())
        async with local.server.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(deliveries).where(
                        deliveries.c.endpoint_id == both, deliveries.c.event_id == logout
                    )
                )
            ).one()
        body = json.loads(row.payload)
        assert body["type"] == LOGOUT
        assert body["data"]["id"] == logout
        assert body["data"]["actor"] == {"type": "user", "id": "usr_alice"}
        assert body["data"]["subject"] == "user:usr_alice"
        assert body["data"]["details"] == {"method": "password"}
        # No personal data of whoever acted leaves in a webhook.
        assert "198.51.100.7" not in row.payload
        assert "Firefox" not in row.payload
        # One body for every endpoint of one event: byte for byte the same.
        async with local.server.engine.connect() as conn:
            bodies = (
                (
                    await conn.execute(
                        select(deliveries.c.payload).where(deliveries.c.event_id == login)
                    )
                )
                .scalars()
                .all()
            )
        assert len(bodies) == 2
        assert len(set(bodies)) == 1


async def test_a_restarted_intake_resumes_from_its_cursor(local, tmp_path, connector) -> None:
    async with audit_service(local, tmp_path, port=0, directory=Directory()) as audit:
        ws = audit.workspace()
        endpoint = await _endpoint(local, ws, LOGIN)
        async with running_intake(local, audit, connector) as intake:
            before = [await audit.ingest(ws) for _ in range(2)]
            await asyncio.wait_for(intake.until_committed(2), timeout=10)
        # Stored while no intake ran: found again from the cursor, not lost to "now".
        during = [await audit.ingest(ws) for _ in range(3)]
        async with running_intake(local, audit, connector) as intake:
            await asyncio.wait_for(intake.until_committed(3), timeout=10)
            after = await audit.ingest(ws)
            await asyncio.wait_for(intake.until_committed(4), timeout=10)
            assert intake.events_committed == 4  # nothing read twice
        assert (await _queued(local))[endpoint] == {*before, *during, after}
        # Fed everything again from the start: UNIQUE(endpoint, event) queues nothing twice.
        await local.execute("UPDATE stream_cursor SET cursor = '0'")
        async with running_intake(local, audit, connector) as intake:
            await asyncio.wait_for(intake.until_committed(6), timeout=10)
        async with local.server.engine.connect() as conn:
            count = len((await conn.execute(select(deliveries.c.id))).all())
            cursor = (await conn.execute(select(stream_cursor.c.cursor))).scalar_one()
        assert count == 6
        assert cursor != "0"


async def test_the_intake_waits_out_an_audit_restart(local, tmp_path, connector) -> None:
    port = _free_port()  # audit comes back where it was
    directory = Directory()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    runtime = runtime_of(local, connector, audit_channel=channel)
    intake = runtime.intake
    task: asyncio.Task[None] | None = None
    try:
        async with audit_service(local, tmp_path, port=port, directory=directory) as audit:
            ws = audit.workspace()
            endpoint = await _endpoint(local, ws, LOGIN)
            task = asyncio.create_task(intake.run())
            await asyncio.wait_for(intake.connected.wait(), timeout=10)
            first = await audit.ingest(ws)
            await asyncio.wait_for(intake.until_committed(1), timeout=10)
        # Audit is down: the stream failed, and the intake keeps trying with backoff.
        async with audit_service(local, tmp_path, port=port, directory=directory) as again:
            while_away = await again.ingest(ws)
            await asyncio.wait_for(intake.until_committed(2), timeout=15)
            later = await again.ingest(ws)
            await asyncio.wait_for(intake.until_committed(3), timeout=10)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await channel.close()
    assert (await _queued(local))[endpoint] == {first, while_away, later}
    restarts = sum(
        runtime.registry.get_sample_value(
            "palisade_webhooks_intake_stream_restarts_total", {"code": code}
        )
        or 0
        for code in ("unavailable", "ended", "cancelled", "unknown", "internal")
    )
    assert restarts >= 1
