"""What a stranger can do with API keys they should not be able to abuse (review findings).

- A publishable key is public (it sits in a web page, and Origin is only a header to a
  script): its traffic must not spend its creator's own budget, or anyone could lock the
  owner out, even out of revoking that key.
- Checksums are public, so valid-looking made-up keys are free: each key lookup that misses
  the cache, and each anonymous leak report, spends the client network's lookup budget.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from palisade.common.api_key_format import ALPHABET, checksum

from .conftest import Suite

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
ORIGIN = "https://shop.example.com"
LOOKUP_BURST = 100  # the gateway's default client_lookup_limit_burst


def _made_up() -> str:
    body = "sk_live_" + "".join(secrets.choice(ALPHABET) for _ in range(32))
    return body + checksum(body)


async def _status(suite: Suite, key: str, **headers: str) -> int:
    status, _, _ = await suite.call(
        "GET", "/v1/whoami", headers={"Authorization": f"Bearer {key}", **headers}
    )
    return status


async def test_a_widget_keys_traffic_cannot_lock_its_owner_out(suite) -> None:
    token = (await suite.sign_up_and_log_in("owner@example.com"))["accessToken"]
    status, created, _ = await suite.json_call(
        "POST",
        "/v1/api-keys",
        token=token,
        json={
            "name": "widget",
            "type": "publishable",
            "scopes": ["chats:write"],
            "allowedOrigins": [ORIGIN],
            "rateLimit": {"requestsPerMinute": 20000, "burst": 1000},
        },
    )
    assert status == 201, created
    widget = created["key"]
    suite.clock.advance(60)
    statuses = await asyncio.gather(*(_status(suite, widget, Origin=ORIGIN) for _ in range(310)))
    # The widget's traffic hit its creator's key-traffic limit (300 at once)...
    assert statuses.count(200) == 300
    assert statuses.count(429) == 10
    # ...and the owner's own budget is untouched: they can still revoke the key.
    status, body, _ = await suite.json_call(
        "POST", f"/v1/api-keys/{created['apiKey']['id']}/revoke", token=token, json={}
    )
    assert status == 204, body


async def test_made_up_keys_spend_the_clients_lookup_budget(suite) -> None:
    keys = suite.gateway.keys
    calls = 0
    real = keys._stub.VerifyApiKey

    async def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return await real(*args, **kwargs)

    keys._stub.VerifyApiKey = counting
    statuses = [await _status(suite, _made_up()) for _ in range(LOOKUP_BURST + 50)]
    assert statuses[:LOOKUP_BURST] == [401] * LOOKUP_BURST
    assert set(statuses[LOOKUP_BURST:]) == {429}
    assert calls == LOOKUP_BURST  # the refused ones never reached the key service
    # A known client retrying one dead key is answered from the refusal cache: no budget.
    dead = _made_up()
    suite.clock.advance(1)  # 10 lookups' worth back (600 a minute)
    assert await _status(suite, dead) == 401
    assert [await _status(suite, dead) for _ in range(20)] == [401] * 20
    assert calls == LOOKUP_BURST + 1


async def test_anonymous_leak_reports_are_limited_per_client(suite) -> None:
    statuses = []
    for _ in range(LOOKUP_BURST + 20):
        status, _, _ = await suite.call(
            "POST", "/v1/api-keys/report-leak", json={"key": _made_up(), "source": "x"}
        )
        statuses.append(status)
    assert statuses[:LOOKUP_BURST] == [202] * LOOKUP_BURST
    assert set(statuses[LOOKUP_BURST:]) == {429}
