"""Two gateway replicas: a logout through one is refused by the other within a second."""

from __future__ import annotations

import asyncio
import time

import pytest

from palisade.gateway.server import serve_gateway

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_logout_reaches_every_gateway_replica_within_a_second(suite) -> None:
    async with serve_gateway(suite.gateway_settings, clock=suite.clock) as other:
        for _ in range(500):  # readiness: the replica follows the revocation feed
            if other.edge.feed_connected:
                break
            await asyncio.sleep(0.01)
        tokens = await suite.sign_up_and_log_in("replicas@example.com")
        headers = {"Authorization": f"Bearer {tokens['accessToken']}"}
        async with suite.http.get(other.base_url + "/v1/me", headers=headers) as response:
            assert response.status == 200
        assert len(other.cache) == 1  # cached on the other replica

        status, _, _ = await suite.call("POST", "/v1/auth/logout", token=tokens["accessToken"])
        assert status == 204
        logged_out = time.monotonic()
        for _ in range(200):  # polls the other replica's cache, for at most about a second
            if not len(other.cache) or time.monotonic() - logged_out >= 1.0:
                break
            await asyncio.sleep(0.005)
        propagation = time.monotonic() - logged_out
        async with suite.http.get(other.base_url + "/v1/me", headers=headers) as response:
            assert response.status == 401
        assert propagation < 1.0
