"""The whole suite (crypto, auth, gateway) on free ports, reached over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from palisade.auth.config import AuthSettings
from palisade.auth.server import serve_auth
from palisade.common.clock import ManualClock
from palisade.crypto.config import CryptoSettings
from palisade.crypto.server import serve_crypto
from palisade.gateway.config import GatewaySettings
from palisade.gateway.server import GatewayServer, serve_gateway

PASSWORD = "correct horse battery staple"


@dataclass
class Suite:
    gateway: GatewayServer
    http: aiohttp.ClientSession
    clock: ManualClock
    gateway_settings: GatewaySettings

    def url(self, path: str) -> str:
        return self.gateway.base_url + path

    async def call(
        self,
        method: str,
        path: str,
        *,
        json=None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data=None,
    ):
        all_headers = dict(headers or {})
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(
            method, self.url(path), json=json, data=data, headers=all_headers
        ) as response:
            body = await response.read()
            return response.status, response.headers.copy(), body  # case-insensitive

    async def sign_up_and_log_in(self, email: str) -> dict:
        status, _, _ = await self.call(
            "POST", "/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Ada"}
        )
        assert status == 201
        status, _, body = await self.call(
            "POST", "/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert status == 200, body
        import json as _json

        return _json.loads(body)


@pytest.fixture
async def suite(tmp_path: Path, postgres_database_factory, redis_url: str) -> AsyncIterator[Suite]:
    clock = ManualClock(datetime.now(UTC))
    common = {"data_dir": tmp_path, "grpc_port": 0, "metrics_port": 0, "shutdown_grace_seconds": 1}
    async with AsyncExitStack() as stack:
        crypto = await stack.enter_async_context(
            serve_crypto(
                CryptoSettings(
                    **common, database_url=postgres_database_factory(), usage_sync_seconds=3600
                ),
                clock=clock,
            )
        )
        auth = await stack.enter_async_context(
            serve_auth(
                AuthSettings(
                    **common,
                    database_url=postgres_database_factory(),
                    redis_url=redis_url,
                    crypto_target=crypto.running.target,
                    hashing_threads=2,
                ),
                clock=clock,
            )
        )
        gateway_settings = GatewaySettings(
            data_dir=tmp_path,
            http_port=0,
            metrics_port=0,
            auth_target=auth.running.target,
            max_body_bytes=16 * 1024,
        )
        gateway = await stack.enter_async_context(serve_gateway(gateway_settings, clock=clock))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        suite = Suite(gateway, http, clock, gateway_settings)
        await _wait_for_revocation_feed(suite)
        yield suite


async def _wait_for_revocation_feed(suite: Suite) -> None:
    """Readiness, not timing: the gateway caches tokens only once it follows revocations."""
    import asyncio

    for _ in range(500):
        if suite.gateway.edge.feed_connected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the gateway never connected to the revocation feed")
