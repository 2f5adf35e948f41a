from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from palisade.common.caller import AssertionSigner, Keyset, load_keyset
from palisade.common.clock import ManualClock
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import CryptoServer, serve_crypto
from palisade_api.crypto.v1 import crypto_pb2_grpc

pytestmark = pytest.mark.postgres


@dataclass
class CryptoHarness:
    server: CryptoServer
    stub: crypto_pb2_grpc.CryptoServiceStub
    settings: CryptoSettings
    clock: ManualClock
    keyset: Keyset

    def signer(self, issuer: str = "auth") -> AssertionSigner:
        return AssertionSigner(keyset=self.keyset, issuer=issuer, clock=self.clock, ttl_seconds=60)

    def metadata(self, service: str = "auth") -> tuple[tuple[str, str], ...]:
        """What a well-behaved peer service sends."""
        return ServiceIdentity(name=service, signer=self.signer(service)).metadata("crypto")


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
    async with serve_crypto(settings, clock=clock) as server:
        keyset = load_keyset(settings.resolved_internal_keys_file(), create_if_missing=False)
        async with insecure_channel(server.running.target) as channel:
            yield CryptoHarness(
                server=server,
                stub=crypto_pb2_grpc.CryptoServiceStub(channel),
                settings=settings,
                clock=clock,
                keyset=keyset,
            )


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
