"""Fixtures of the audit integration tests (the harness is in audit_support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from deferred_signing import DeferredSigning

from palisade.audit.config import AuditSettings
from palisade.audit.server import serve_audit
from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeySource, read_document
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import serve_crypto
from palisade_api.audit.v1 import audit_pb2_grpc

from .audit_support import Harness, fake_auth


@pytest.fixture
def audit_factory(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Harness]]:
    def start(database_url: str, **overrides: Any) -> AbstractAsyncContextManager[Harness]:
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
                master = read_document(
                    CryptoSettings(data_dir=tmp_path).resolved_edge_keys_master_file()
                )
                directory, auth = await stack.enter_async_context(
                    fake_auth(master, clock, tmp_path)
                )
                values: dict[str, Any] = {
                    "data_dir": tmp_path,
                    "database_url": database_url,
                    "crypto_target": crypto.running.target,
                    "auth_target": auth.target,
                    "grpc_port": 0,
                    "metrics_port": 0,
                    "shutdown_grace_seconds": 1,
                    "stream_poll_seconds": 0.05,
                    # Webhooks (the real subscriber) has no edge yet: apikeys stands in.
                    "stream_subscribers": ["apikeys"],
                }
                values.update(overrides)
                settings = AuditSettings(**values)
                server = await stack.enter_async_context(
                    serve_audit(settings, clock=clock, background=False)
                )
                signing = DeferredSigning(
                    audience="audit",
                    signer_for=lambda issuer: AssertionSigner(
                        keys=KeySource.from_master(master, issuer), clock=clock, ttl_seconds=60
                    ),
                )
                channel = await stack.enter_async_context(signing.channel(server.running.target))
                yield Harness(
                    server,
                    audit_pb2_grpc.AuditServiceStub(channel),
                    clock,
                    master,
                    signing,
                    directory,
                    crypto,
                    settings,
                    database_url,
                )

        return running()

    return start


@pytest.fixture
async def audit(audit_factory, database_url: str) -> AsyncIterator[Harness]:
    """The service on SQLite and on Postgres (every test using it runs on both)."""
    async with audit_factory(database_url) as harness:
        yield harness


@pytest.fixture
async def audit_pg(audit_factory, postgres_url: str) -> AsyncIterator[Harness]:
    async with audit_factory(postgres_url) as harness:
        yield harness
