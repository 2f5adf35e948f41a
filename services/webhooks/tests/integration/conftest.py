"""A running crypto + webhooks pair, and the gateway's side of the calls.

Real gRPC on port 0, real crypto (its own SQLite database, its keyring in tmp_path), the
webhooks database on SQLite or Postgres, a ManualClock shared by both. Calls are signed as the
gateway delegating for a person or an API key, exactly as the gateway signs them. Names are
resolved by the egress tests' FakeResolver (tests/conftest.py), never by DNS; the worker and
intake do not run, and audit is not running: events stay in the outbox.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from deferred_signing import DeferredSigning
from grpc_harness import embedded_crypto_settings, refused
from sqlalchemy import select, text

from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeySource, read_document
from palisade.crypto.server import CryptoServer, serve_crypto
from palisade.webhooks.config import WebhooksSettings
from palisade.webhooks.server import WebhooksServer, serve_webhooks
from palisade.webhooks.tables import deliveries, endpoint_secrets, endpoints, outbox_events
from palisade_api.webhooks.v1 import webhooks_pb2 as pb
from palisade_api.webhooks.v1 import webhooks_pb2_grpc

PUBLIC_HOST = "hooks.example.com"
PUBLIC_ADDRESS = "93.184.216.34"  # only ever an answer of the fake resolver: never dialled


def new_workspace() -> str:
    return f"ws_{secrets.token_hex(16)}"


@dataclass
class Harness:
    server: WebhooksServer
    crypto: CryptoServer
    stub: webhooks_pb2_grpc.WebhooksServiceStub
    clock: ManualClock
    signing: DeferredSigning
    settings: WebhooksSettings
    resolver: Any  # tests/conftest.py FakeResolver
    stop_crypto: Callable[[], Any]

    def person(
        self, workspace_id: str, *, role: str = "owner", user_id: str = "usr_alice"
    ) -> tuple[tuple[str, str], ...]:
        return self.signing.marker(
            "gateway",
            principal=f"user:{user_id}",
            workspace_id=workspace_id,
            session_id="ses_1",
            role=role,
            authenticated_at=int(self.clock.timestamp()),
        )

    def key(
        self,
        workspace_id: str,
        *,
        type: str = "secret",
        mode: str = "live",
        scopes: tuple[str, ...] = ("webhooks:manage",),
    ) -> tuple[tuple[str, str], ...]:
        return self.signing.marker(
            "gateway",
            principal=f"apikey:key_{secrets.token_hex(16)}",
            workspace_id=workspace_id,
            scopes=list(scopes),
            key_mode=mode,
            key_type=type,
            acting_user_id="usr_alice",
        )

    async def create(
        self,
        workspace_id: str,
        *,
        url: str = f"https://{PUBLIC_HOST}/hooks?token=s3cr3t-token",
        event_types: tuple[str, ...] = ("chat.message.created",),
        description: str = "",
    ) -> pb.CreatedWebhook:
        return await self.stub.CreateWebhook(
            pb.CreateWebhookRequest(
                url=url, event_types=list(event_types), description=description
            ),
            metadata=self.person(workspace_id),
        )

    async def rows(self, table: Any) -> list[Any]:
        async with self.server.engine.connect() as conn:
            return list((await conn.execute(select(table))).all())

    async def endpoint_rows(self) -> list[Any]:
        return await self.rows(endpoints)

    async def secret_rows(self) -> list[Any]:
        return await self.rows(endpoint_secrets)

    async def delivery_rows(self) -> list[Any]:
        return await self.rows(deliveries)

    async def events(self, event_type: str | None = None) -> list[Any]:
        query = select(outbox_events).order_by(outbox_events.c.id)
        if event_type:
            query = query.where(outbox_events.c.event_type == event_type)
        async with self.server.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def execute(self, sql: str, **params: Any) -> None:
        async with self.server.engine.begin() as conn:
            await conn.execute(text(sql), params)

    refused = staticmethod(refused)


@pytest.fixture
def webhooks_factory(
    tmp_path: Path, resolver: Any, connector: Any
) -> Callable[..., AbstractAsyncContextManager[Harness]]:
    resolver.add(PUBLIC_HOST, [PUBLIC_ADDRESS])

    def start(
        database_url: str, *, run_background: bool = False, **overrides: Any
    ) -> AbstractAsyncContextManager[Harness]:
        """run_background: also run the worker and the intake (their sockets come from the
        egress tests' LoopbackOnlyConnector)."""

        @asynccontextmanager
        async def running() -> AsyncIterator[Harness]:
            clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
            crypto_settings = embedded_crypto_settings(tmp_path)
            async with AsyncExitStack() as stack:
                crypto_stack = AsyncExitStack()
                stack.push_async_callback(crypto_stack.aclose)
                crypto = await crypto_stack.enter_async_context(
                    serve_crypto(crypto_settings, clock=clock)
                )
                values: dict[str, Any] = {
                    "data_dir": tmp_path,
                    "database_url": database_url,
                    "crypto_target": crypto.running.target,
                    "audit_target": "127.0.0.1:9",  # nothing there: events wait in the outbox
                    "auth_target": "127.0.0.1:9",
                    "audit_poll_seconds": 60,
                    "grpc_port": 0,
                    "metrics_port": 0,
                    "shutdown_grace_seconds": 1,
                }
                values.update(overrides)
                settings = WebhooksSettings(**values)
                server = await stack.enter_async_context(
                    serve_webhooks(
                        settings,
                        clock=clock,
                        resolver=resolver,
                        connector=connector,
                        run_background=run_background,
                    )
                )
                master = read_document(crypto_settings.resolved_edge_keys_master_file())
                signing = DeferredSigning(
                    audience="webhooks",
                    signer_for=lambda issuer: AssertionSigner(
                        keys=KeySource.from_master(master, issuer), clock=clock, ttl_seconds=60
                    ),
                )
                channel = await stack.enter_async_context(signing.channel(server.running.target))
                yield Harness(
                    server,
                    crypto,
                    webhooks_pb2_grpc.WebhooksServiceStub(channel),
                    clock,
                    signing,
                    settings,
                    resolver,
                    crypto_stack.aclose,
                )

        return running()

    return start


@pytest.fixture
async def harness(webhooks_factory: Any, database_url: str) -> AsyncIterator[Harness]:
    """The service on SQLite and on Postgres (every test using it runs on both)."""
    async with webhooks_factory(database_url) as running:
        yield running


@pytest.fixture
async def harness_sqlite(webhooks_factory: Any, sqlite_url: str) -> AsyncIterator[Harness]:
    async with webhooks_factory(sqlite_url) as running:
        yield running
