"""A running crypto + apikeys pair with a recording stand-in for auth, and the gateway's side.

Real gRPC on port 0, real crypto (AES-256-GCM), a ManualClock shared by all of them. The fake
auth verifies caller assertions exactly as a real service does (run_server with its own
AssertionVerifier), so only apikeys' real key for the apikeys->auth edge gets through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from deferred_signing import DeferredSigning
from grpc_harness import refused
from prometheus_client import CollectorRegistry
from sqlalchemy import text

from palisade.apikeys.config import ApiKeysSettings
from palisade.apikeys.server import ApiKeysServer, serve_apikeys
from palisade.common.caller import AssertionSigner, AssertionVerifier, require_service_caller
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeyDocument, KeySource, read_document
from palisade.common.grpc_server import run_server
from palisade.common.settings import CommonSettings
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import serve_crypto
from palisade_api.apikeys.v1 import apikeys_pb2 as pb
from palisade_api.apikeys.v1 import apikeys_pb2_grpc
from palisade_api.auth.v1 import auth_pb2, auth_pb2_grpc

USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
TABLES = ("api_keys", "api_key_events", "outbox_events", "notice_outbox", "revocation_outbox")


class RecordingAuth(auth_pb2_grpc.AuthServiceServicer):
    """Auth's SendNotice as other services see it: service callers only, idempotent."""

    def __init__(self) -> None:
        self.notices: list[auth_pb2.SendNoticeRequest] = []
        self.callers: list[str] = []
        self.fail_next = 0
        self._seen: set[str] = set()
        self.arrived = asyncio.Event()

    async def SendNotice(self, request: Any, context: Any) -> auth_pb2.SendNoticeResponse:
        caller = require_service_caller()
        if self.fail_next:
            self.fail_next -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "auth is down")
        self.callers.append(caller.principal)
        if request.idempotency_key not in self._seen:
            self._seen.add(request.idempotency_key)
            self.notices.append(request)
            self.arrived.set()
        return auth_pb2.SendNoticeResponse(recipients=1)

    def of_kind(self, kind: str) -> list[auth_pb2.SendNoticeRequest]:
        return [n for n in self.notices if n.kind == kind]


@dataclass
class Harness:
    server: ApiKeysServer
    stub: apikeys_pb2_grpc.ApiKeysServiceStub
    clock: ManualClock
    master: KeyDocument
    signing: DeferredSigning
    auth: RecordingAuth
    settings: ApiKeysSettings
    extra: dict[str, object] = field(default_factory=dict)

    def person(
        self,
        user_id: str = "usr_alice",
        workspace_id: str = "wsp_a",
        *,
        role: str = "owner",
        login_age: float = 30,
        ip: str = "203.0.113.7",
        user_agent: str = USER_AGENT,
    ) -> tuple[tuple[str, str], ...]:
        return self.signing.marker(
            "gateway",
            principal=f"user:{user_id}",
            workspace_id=workspace_id,
            session_id="ses_1",
            client_ip=ip,
            user_agent=user_agent,
            role=role,
            authenticated_at=int(self.clock.timestamp() - login_age),
        )

    def gateway(self) -> tuple[tuple[str, str], ...]:
        return self.signing.marker("gateway")

    def anonymous(self, ip: str = "198.51.100.9") -> tuple[tuple[str, str], ...]:
        return self.signing.marker(
            "gateway", principal="anonymous", client_ip=ip, user_agent=USER_AGENT
        )

    def signer(self, issuer: str) -> AssertionSigner:
        return AssertionSigner(
            keys=KeySource.from_master(self.master, issuer), clock=self.clock, ttl_seconds=60
        )

    async def create(self, metadata: Any = None, **fields: Any) -> pb.CreatedApiKey:
        values: dict[str, Any] = {"name": "Server key", "type": "secret", "scopes": ["chats:read"]}
        values.update(fields)
        return await self.stub.CreateApiKey(
            pb.CreateApiKeyRequest(**values), metadata=metadata or self.person()
        )

    async def counts(self) -> dict[str, int]:
        async with self.server.engine.connect() as conn:
            return {
                t: int((await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar_one())
                for t in TABLES
            }

    async def security_events(self, event_type: str) -> list[str]:
        async with self.server.engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT payload FROM outbox_events WHERE event_type = :t ORDER BY id"),
                {"t": event_type},
            )
            return [r[0] for r in rows]

    refused = staticmethod(refused)

    async def send_notices(self) -> int:
        return await self.server.notice_relay.run_once()


@asynccontextmanager
async def _fake_auth(
    master: KeyDocument, clock: ManualClock, data_dir: Path
) -> AsyncIterator[tuple[RecordingAuth, int]]:
    servicer = RecordingAuth()

    def add(server: grpc.aio.Server) -> list[str]:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
        return [auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name]

    verifier = AssertionVerifier(keys=KeySource.from_master(master, "auth"), clock=clock)
    settings = CommonSettings(data_dir=data_dir, grpc_port=0, metrics_port=0)
    async with run_server(
        name="auth",
        settings=settings,
        verifier=verifier,
        registry=CollectorRegistry(),
        add_servicers=add,
    ) as running:
        yield servicer, running.grpc_port


@pytest.fixture
def apikeys_factory(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Harness]]:
    def start(
        database_url: str,
        *,
        redis_url: str | None = None,
        relay_notices: bool = False,
        **overrides: Any,
    ) -> AbstractAsyncContextManager[Harness]:
        @asynccontextmanager
        async def running() -> AsyncIterator[Harness]:
            clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
            async with AsyncExitStack() as stack:
                crypto = await stack.enter_async_context(
                    serve_crypto(
                        CryptoSettings(
                            data_dir=tmp_path,
                            database_url=f"sqlite+aiosqlite:///{tmp_path / 'crypto.db'}",
                            grpc_port=0,
                            metrics_port=0,
                            usage_sync_seconds=3600,
                            shutdown_grace_seconds=1,
                        ),
                        clock=clock,
                    )
                )
                values: dict[str, Any] = {
                    "data_dir": tmp_path,
                    "database_url": database_url,
                    "redis_url": redis_url,
                    "crypto_target": crypto.running.target,
                    "grpc_port": 0,
                    "metrics_port": 0,
                    "shutdown_grace_seconds": 1,
                }
                master = read_document(
                    CryptoSettings(data_dir=tmp_path).resolved_edge_keys_master_file()
                )
                auth, auth_port = await stack.enter_async_context(
                    _fake_auth(master, clock, tmp_path)
                )
                values["auth_target"] = f"127.0.0.1:{auth_port}"
                values.update(overrides)
                settings = ApiKeysSettings(**values)
                server = await stack.enter_async_context(
                    serve_apikeys(settings, clock=clock, relay_notices=relay_notices)
                )
                signing = DeferredSigning(
                    audience="apikeys",
                    signer_for=lambda issuer: AssertionSigner(
                        keys=KeySource.from_master(master, issuer), clock=clock, ttl_seconds=60
                    ),
                )
                channel = await stack.enter_async_context(signing.channel(server.running.target))
                yield Harness(
                    server,
                    apikeys_pb2_grpc.ApiKeysServiceStub(channel),
                    clock,
                    master,
                    signing,
                    auth,
                    settings,
                )

        return running()

    return start


@pytest.fixture
async def keys(apikeys_factory, database_url: str) -> AsyncIterator[Harness]:
    """The service on SQLite and on Postgres (every test using it runs on both)."""
    async with apikeys_factory(database_url) as harness:
        yield harness


@pytest.fixture
async def keys_sqlite(apikeys_factory, sqlite_url: str) -> AsyncIterator[Harness]:
    async with apikeys_factory(sqlite_url) as harness:
        yield harness
