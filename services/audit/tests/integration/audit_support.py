"""Helpers of the audit tests: a crypto + audit pair with a stand-in for auth's directory.

Real gRPC on port 0, real crypto (AES-256-GCM, subject keys), a ManualClock shared by all. The
stand-in directory verifies caller assertions exactly as auth does (run_server with its own
AssertionVerifier), so only audit's real key for the audit->auth edge gets through, and it can
be told which workspaces exist or to fail as an unreachable auth would.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from deferred_signing import DeferredSigning
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_harness import refused
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from palisade.audit.config import AuditSettings
from palisade.audit.server import AuditServer
from palisade.common.caller import AssertionSigner, AssertionVerifier, require_service_caller
from palisade.common.clock import ManualClock
from palisade.common.crypto_client import CryptoClient
from palisade.common.edge_keys import KeyDocument, KeySource
from palisade.common.grpc_client import ServiceIdentity
from palisade.common.grpc_server import RunningServer, run_server
from palisade.common.settings import CommonSettings
from palisade.crypto.server import CryptoServer
from palisade_api.audit.v1 import audit_pb2 as pb
from palisade_api.audit.v1 import audit_pb2_grpc
from palisade_api.auth.v1 import directory_pb2, directory_pb2_grpc

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"


def workspace_id() -> str:
    return f"ws_{uuid.uuid4().hex}"


def user_id() -> str:
    return f"usr_{uuid.uuid4().hex}"


class FakeDirectory(directory_pb2_grpc.DirectoryServiceServicer):
    """Auth's DirectoryService as audit sees it: service:audit only."""

    def __init__(self) -> None:
        self.workspaces: set[str] = set()
        self.calls = 0
        self.down = False

    async def CheckWorkspaces(self, request: Any, context: Any) -> Any:
        caller = require_service_caller()
        assert caller.principal == "service:audit"
        self.calls += 1
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "auth is down")
        return directory_pb2.CheckWorkspacesResponse(
            existing_workspace_ids=[i for i in request.workspace_ids if i in self.workspaces]
        )


@asynccontextmanager
async def fake_auth(
    master: KeyDocument, clock: ManualClock, data_dir: Path
) -> AsyncIterator[tuple[FakeDirectory, RunningServer]]:
    servicer = FakeDirectory()

    def add(server: grpc.aio.Server) -> list[str]:
        directory_pb2_grpc.add_DirectoryServiceServicer_to_server(servicer, server)
        return [directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name]

    verifier = AssertionVerifier(keys=KeySource.from_master(master, "auth"), clock=clock)
    settings = CommonSettings(data_dir=data_dir, grpc_port=0, metrics_port=0)
    async with run_server(
        name="auth",
        settings=settings,
        verifier=verifier,
        registry=CollectorRegistry(),
        add_servicers=add,
    ) as running:
        yield servicer, running


def event(
    *,
    workspace: str = "",
    type: str = "session.login_succeeded",
    actor: str = "",
    subject: str = "",
    ip: str = "198.51.100.7",
    user_agent: str = FIREFOX,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
    details: dict[str, str] | None = None,
    **fields: Any,
) -> pb.IngestEvent:
    moment = Timestamp()
    moment.FromDatetime(occurred_at or datetime.now(UTC) - timedelta(seconds=1))
    return pb.IngestEvent(
        event_id=event_id or uuid.uuid4().hex,
        type=type,
        occurred_at=moment,
        workspace_id=workspace,
        actor=actor,
        subject=subject,
        ip=ip,
        user_agent=user_agent,
        outcome=fields.pop("outcome", "success"),
        details=details or {},
        **fields,
    )


@dataclass
class Harness:
    server: AuditServer
    stub: audit_pb2_grpc.AuditServiceStub
    clock: ManualClock
    master: KeyDocument
    signing: DeferredSigning
    directory: FakeDirectory
    crypto: CryptoServer
    settings: AuditSettings
    database_url: str
    extra: dict[str, object] = field(default_factory=dict)

    def service(self, name: str = "auth") -> tuple[tuple[str, str], ...]:
        return self.signing.marker(name)

    def person(
        self, user: str, workspace: str, *, role: str = "owner"
    ) -> tuple[tuple[str, str], ...]:
        return self.signing.marker(
            "gateway",
            principal=f"user:{user}",
            workspace_id=workspace,
            session_id="ses_1",
            client_ip="203.0.113.9",
            user_agent=FIREFOX,
            role=role,
        )

    def anonymous(self) -> tuple[tuple[str, str], ...]:
        return self.signing.marker("gateway", principal="anonymous")

    def workspace(self) -> str:
        created = workspace_id()
        self.directory.workspaces.add(created)
        return created

    async def ingest(self, *events: pb.IngestEvent, source: str = "auth") -> pb.IngestResponse:
        return await self.stub.Ingest(
            pb.IngestRequest(events=list(events)), metadata=self.service(source)
        )

    async def shred(self, subject: str) -> None:
        """Erases a data subject as auth or visitors would (ShredSubject on crypto)."""
        signer = AssertionSigner(
            keys=KeySource.from_master(self.master, "auth"), clock=self.clock, ttl_seconds=60
        )
        channel = grpc.aio.insecure_channel(self.crypto.running.target)
        try:
            client = CryptoClient(
                channel=channel, identity=ServiceIdentity(name="auth", signer=signer)
            )
            await client.shred_subject(subject)
        finally:
            await channel.close()

    async def count(self, table: str = "events") -> int:
        async with self.server.engine.connect() as conn:
            return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())

    async def execute(self, statement: str, **params: Any) -> None:
        async with self.server.engine.begin() as conn:
            await conn.execute(text(statement), params)

    async def chain(self, workspace: str) -> list[tuple[int, str]]:
        """(seq, event id) of a chain, in seq order."""
        async with self.server.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT seq, event_id FROM events WHERE workspace_id = :w ORDER BY seq"),
                {"w": workspace},
            )
            return [(int(r[0]), str(r[1])) for r in rows]

    refused = staticmethod(refused)


def trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    for name, value in error.trailing_metadata() or ():
        if name == key:
            return str(value)
    return None
