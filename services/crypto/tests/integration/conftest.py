from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from deferred_signing import DeferredSigning

from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeyDocument, KeySource, read_document
from palisade.common.edges import EDGES, Edge
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import CryptoServer, serve_crypto
from palisade_api.crypto.v1 import crypto_pb2_grpc

pytestmark = pytest.mark.postgres

# The real edges, plus a caller crypto must not trust with its data
# (a gateway->crypto edge exists nowhere in production): what crypto itself refuses is tested
# with validly signed assertions from them.
TEST_EDGES = (
    *EDGES,
    Edge("gateway", "crypto", delegates=True),
)


@dataclass
class CryptoHarness:
    server: CryptoServer
    stub: crypto_pb2_grpc.CryptoServiceStub
    settings: CryptoSettings
    clock: ManualClock
    master: KeyDocument
    signing: DeferredSigning

    def signer(self, issuer: str = "auth") -> AssertionSigner:
        keys = KeySource.from_master(self.master, issuer, TEST_EDGES)
        return AssertionSigner(keys=keys, clock=self.clock, ttl_seconds=60)

    def metadata(self, service: str = "visitors", **claims: object) -> tuple[tuple[str, str], ...]:
        """What a well-behaved peer service sends: signed per call, for the method called.

        Visitors by default: the tests' associated data is ("visitors", ...), and crypto opens
        only the caller's own data."""
        return self.signing.marker(service, **claims)

    def sign(self, method: str, service: str = "visitors", **claims: object) -> str:
        """One real assertion for `method` ("Encrypt" or "/pkg.Service/Method")."""
        if not method.startswith("/"):
            method = f"/palisade.crypto.v1.CryptoService/{method}"
        claims.setdefault("principal", f"service:{service}")
        claims.setdefault("request_id", "r")
        return self.signer(service).sign(audience="crypto", method=method, **claims)  # type: ignore[arg-type]


def crypto_settings(data_dir: Path, database_url: str, **overrides: object) -> CryptoSettings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "grpc_port": 0,
        "metrics_port": 0,
        "keyring_reload_seconds": 0.05,
        "usage_sync_seconds": 3600,
        "usage_lease_size": 1,  # exact counts in assertions
        "shutdown_grace_seconds": 1,
    }
    values.update(overrides)
    return CryptoSettings(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def running_crypto(settings: CryptoSettings) -> AsyncIterator[CryptoHarness]:
    """A real crypto server on free ports, with a channel to it and a controllable clock."""
    clock = ManualClock(datetime.now(UTC))
    async with serve_crypto(settings, clock=clock, edges=TEST_EDGES) as server:
        master = read_document(settings.resolved_edge_keys_master_file())
        harness: list[CryptoHarness] = []
        signing = DeferredSigning(audience="crypto", signer_for=lambda i: harness[0].signer(i))
        async with signing.channel(server.running.target) as channel:
            harness.append(
                CryptoHarness(
                    server=server,
                    stub=crypto_pb2_grpc.CryptoServiceStub(channel),
                    settings=settings,
                    clock=clock,
                    master=master,
                    signing=signing,
                )
            )
            yield harness[0]


@pytest.fixture
def crypto_factory(tmp_path: Path, postgres_url: str):
    """Starts a crypto server with settings overridden per test."""

    def start(**overrides: object) -> AbstractAsyncContextManager[CryptoHarness]:
        return running_crypto(crypto_settings(tmp_path, postgres_url, **overrides))

    return start


@pytest.fixture
async def crypto(crypto_factory) -> AsyncIterator[CryptoHarness]:
    async with crypto_factory() as harness:
        yield harness
