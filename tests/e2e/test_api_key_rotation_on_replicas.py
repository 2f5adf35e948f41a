"""A rotation reaches every gateway replica: the old key stops at its overlap's end everywhere.

Regression (a review finding): a rotation with an overlap published nothing, so a replica that
had cached the old key (valid without end) kept answering it from its cache, past a short
overlap, until the cache entry aged out (60 s). Now the rotation sends a notice on the key
revocation feed; replicas forget the old grant and learn the overlap's end on their next lookup.
"""

from __future__ import annotations

import asyncio

import pytest

from palisade.gateway.server import serve_gateway

from .conftest import Suite, wait_for_feeds

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _whoami(suite: Suite, base_url: str, key: str) -> int:
    async with suite.http.get(
        base_url + "/v1/whoami", headers={"Authorization": f"Bearer {key}"}
    ) as response:
        return response.status


async def test_a_short_overlap_ends_on_every_replica(suite) -> None:
    token = (await suite.sign_up_and_log_in("rot@example.com"))["accessToken"]
    status, created, _ = await suite.json_call(
        "POST",
        "/v1/api-keys",
        token=token,
        json={"name": "ci", "type": "secret", "scopes": ["team:read"]},
    )
    assert status == 201
    old = created["key"]
    async with serve_gateway(suite.gateway_settings, clock=suite.clock) as other:
        await wait_for_feeds(other)
        assert await _whoami(suite, other.base_url, old) == 200
        assert len(other.key_cache) == 1  # cached on the other replica, valid without end
        status, rotated, _ = await suite.json_call(
            "POST",
            f"/v1/api-keys/{created['apiKey']['id']}/rotate",
            token=token,
            json={"overlapSeconds": 1},
        )
        assert status == 201, rotated
        # The rotation's notice reaches the other replica (within a second, wall time).
        for _ in range(100):
            if not len(other.key_cache):
                break
            await asyncio.sleep(0.01)
        assert len(other.key_cache) == 0
        assert await _whoami(suite, other.base_url, old) == 200  # in the overlap
        assert other.keys.feed_connected
        # 1.5 s on the clock: past the overlap, inside the feeds' heartbeat deadline (2 s),
        # so the other replica still trusts its cache; it must refuse from it all the same.
        suite.clock.advance(1.5)
        assert await _whoami(suite, other.base_url, old) == 401
        assert await _whoami(suite, suite.gateway.base_url, old) == 401
        assert await _whoami(suite, other.base_url, rotated["key"]) == 200
