"""A running crypto + visitors pair, and the gateway's side of the calls.

Real gRPC on port 0, real crypto (its own SQLite database, its keyring in tmp_path), the
visitors database on SQLite or Postgres, a ManualClock shared by both. Calls are signed as the
gateway delegating for a person or an API key, exactly as the gateway signs them. Audit is not
running: events stay in the outbox, which is where these tests look for them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
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
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import CryptoServer, serve_crypto
from palisade.visitors.config import VisitorsSettings
from palisade.visitors.server import VisitorsServer, serve_visitors
from palisade.visitors.tables import outbox_events, visitors
from palisade_api.visitors.v1 import visitors_pb2 as pb
from palisade_api.visitors.v1 import visitors_pb2_grpc

ALL_SCOPES = ("visitors:read", "visitors:write", "chats:read", "chats:write")


def new_workspace() -> str:
    return f"ws_{secrets.token_hex(16)}"


@dataclass
class Harness:
    server: VisitorsServer
    crypto: CryptoServer
    stub: visitors_pb2_grpc.VisitorsServiceStub
    clock: ManualClock
    signing: DeferredSigning
    settings: VisitorsSettings
    crypto_settings: CryptoSettings
    stop_crypto: Callable[[], Any]

    def person(self, workspace_id: str, user_id: str = "usr_alice") -> tuple[tuple[str, str], ...]:
        return self.signing.marker(
            "gateway",
            principal=f"user:{user_id}",
            workspace_id=workspace_id,
            session_id="ses_1",
            role="member",
            authenticated_at=int(self.clock.timestamp()),
        )

    def key(
        self,
        workspace_id: str,
        *,
        mode: str = "live",
        type: str = "secret",
        scopes: tuple[str, ...] = ALL_SCOPES,
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

    async def create(self, metadata: Any, **fields: str) -> pb.Visitor:
        return await self.stub.CreateVisitor(pb.CreateVisitorRequest(**fields), metadata=metadata)

    async def rows(self) -> list[Any]:
        async with self.server.engine.connect() as conn:
            return list((await conn.execute(select(visitors).order_by(visitors.c.id))).all())

    async def row(self, visitor_id: str) -> Any:
        async with self.server.engine.connect() as conn:
            return (await conn.execute(select(visitors).where(visitors.c.id == visitor_id))).one()

    async def events(self, event_type: str | None = None) -> list[Any]:
        query = select(outbox_events).order_by(outbox_events.c.id)
        if event_type:
            query = query.where(outbox_events.c.event_type == event_type)
        async with self.server.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def execute(self, sql: str, **params: Any) -> None:
        async with self.server.engine.begin() as conn:
            await conn.execute(text(sql), params)

    def crypto_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The operator's `palisade-crypto ...` against this crypto (run in a thread)."""
        env = {
            **os.environ,
            "PALISADE_DATA_DIR": str(self.crypto_settings.data_dir),
            "PALISADE_CRYPTO_DATABASE_URL": str(self.crypto_settings.database_url),
        }
        return subprocess.run(
            [sys.executable, "-m", "palisade.crypto", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    async def until_crypto(self, predicate: Callable[[CryptoServer], bool]) -> None:
        """Waits for crypto's keyring watcher to see an operator's change."""
        deadline = time.monotonic() + 10
        while not predicate(self.crypto):
            if time.monotonic() > deadline:
                raise AssertionError("crypto did not pick up the keyring change")
            await asyncio.sleep(0.05)

    refused = staticmethod(refused)


@pytest.fixture
def visitors_factory(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Harness]]:
    def start(database_url: str, **overrides: Any) -> AbstractAsyncContextManager[Harness]:
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
                    "audit_poll_seconds": 60,
                    "grpc_port": 0,
                    "metrics_port": 0,
                    "shutdown_grace_seconds": 1,
                }
                values.update(overrides)
                settings = VisitorsSettings(**values)
                server = await stack.enter_async_context(
                    serve_visitors(settings, clock=clock, run_rewrap=False)
                )
                master = read_document(crypto_settings.resolved_edge_keys_master_file())
                signing = DeferredSigning(
                    audience="visitors",
                    signer_for=lambda issuer: AssertionSigner(
                        keys=KeySource.from_master(master, issuer), clock=clock, ttl_seconds=60
                    ),
                )
                channel = await stack.enter_async_context(signing.channel(server.running.target))
                yield Harness(
                    server,
                    crypto,
                    visitors_pb2_grpc.VisitorsServiceStub(channel),
                    clock,
                    signing,
                    settings,
                    crypto_settings,
                    crypto_stack.aclose,
                )

        return running()

    return start


@pytest.fixture
async def harness(visitors_factory, database_url: str) -> AsyncIterator[Harness]:
    """The service on SQLite and on Postgres (every test using it runs on both)."""
    async with visitors_factory(database_url) as running:
        yield running


@pytest.fixture
async def harness_sqlite(visitors_factory, sqlite_url: str) -> AsyncIterator[Harness]:
    async with visitors_factory(sqlite_url) as running:
        yield running
