"""API keys end to end: created by people, used by integrations, limited, rotated, revoked.

The whole suite on Postgres and Redis (crypto, auth, apikeys, gateway with Redis rate limits),
driven over real HTTP; time moves on the injectable clock (SECURITY.md 30-31, 47-48; issue 11).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
from datetime import timedelta

import pytest

from palisade.common.api_key_format import SCANNER_PATTERN, checksum, shape_of
from palisade.gateway.server import serve_gateway

from .conftest import Suite, wait_for_feeds

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
ORIGIN = "https://shop.example.com"


async def _owner(suite: Suite, email: str = "owner@example.com") -> str:
    return (await suite.sign_up_and_log_in(email))["accessToken"]


async def _create(suite: Suite, token: str, **fields) -> tuple[str, dict]:
    body = {"name": "integration", "type": "secret", "scopes": ["team:read"], **fields}
    status, answer, headers = await suite.json_call("POST", "/v1/api-keys", json=body, token=token)
    assert status == 201, answer
    assert headers["Cache-Control"] == "no-store"
    return answer["key"], answer["apiKey"]


async def _whoami(suite: Suite, key: str, **headers: str) -> tuple[int, dict, dict]:
    status, body, answer_headers = await suite.json_call(
        "GET", "/v1/whoami", headers={"Authorization": f"Bearer {key}", **headers}
    )
    return status, body, answer_headers


async def _status(suite: Suite, key: str) -> int:
    return (await _whoami(suite, key))[0]


async def _eventually(ask, expected: int, *, within: float) -> None:
    """Asks until the answer is `expected`, failing after `within` seconds of wall time (what
    is measured here is propagation between processes, not the injectable clock)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await ask() == expected:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not {expected} within {within} s")


async def test_a_secret_key_is_shown_once_and_listed_by_prefix_only(suite) -> None:
    token = await _owner(suite)
    key, api_key = await _create(suite, token, scopes=["team:read", "chats:read"])
    assert re.fullmatch(SCANNER_PATTERN, key)
    assert key.startswith("sk_live_")
    assert api_key["prefix"] == key[:12]
    assert api_key["last4"] == key[-4:]
    assert api_key["state"] == "active"
    status, listed, _ = await suite.json_call("GET", "/v1/api-keys", token=token)
    assert status == 200
    assert [k["id"] for k in listed["apiKeys"]] == [api_key["id"]]
    assert key not in json.dumps(listed)
    status, one, _ = await suite.json_call("GET", f"/v1/api-keys/{api_key['id']}", token=token)
    assert status == 200
    assert key not in json.dumps(one)
    # The key works, as who it is, with the IETF rate-limit fields on the answer.
    status, me, headers = await _whoami(suite, key)
    assert status == 200, me
    assert me["apiKeyId"] == api_key["id"]
    assert me["mode"] == "live"
    assert me["scopes"] == ["chats:read", "team:read"]
    assert "RateLimit-Policy" in headers
    assert "RateLimit" in headers
    assert api_key["id"] not in headers["RateLimit-Policy"]


async def test_scopes_people_only_routes_and_urls(suite) -> None:
    token = await _owner(suite)
    team_key, _ = await _create(suite, token, scopes=["team:read"])
    chats_key, _ = await _create(suite, token, scopes=["chats:read"])
    status, members, _ = await suite.json_call("GET", "/v1/team/members", token=team_key)
    assert status == 200, members
    assert [m["email"] for m in members["members"]] == ["owner@example.com"]
    status, body, _ = await suite.json_call("GET", "/v1/team/members", token=chats_key)
    assert (status, body["code"]) == (403, "insufficient_scope")
    # People-only routes refuse every key, even a valid one.
    for method, path in (("GET", "/v1/me"), ("GET", "/v1/api-keys"), ("POST", "/v1/api-keys")):
        status, body, _ = await suite.json_call(method, path, token=team_key, json={})
        assert (status, body["code"]) == (403, "people_only"), path
    # No secret in a URL: a key in the query string is not a credential (and is refused).
    status, body, _ = await suite.json_call("GET", f"/v1/team/members?key={team_key}")
    assert status in (400, 401), body


async def test_malformed_and_forged_keys_are_refused_without_spending_a_budget(suite) -> None:
    token = await _owner(suite)
    key, _ = await _create(suite, token, rateLimit={"requestsPerMinute": 60, "burst": 5})
    body = key[:-6]
    # Every one-character change is refused as invalid_api_key, and so is a made-up key with
    # a correct checksum that no one ever issued.
    mutants = [key[:i] + ("A" if key[i] != "A" else "B") + key[i + 1 :] for i in range(8, 46, 3)]
    made_up = "sk_live_" + "Q" * 32
    forged = [*mutants, made_up + checksum(made_up), body]
    for candidate in forged * 3:
        status, answer, _ = await _whoami(suite, candidate)
        assert (status, answer["code"]) == (401, "invalid_api_key"), candidate
    # None of that touched the real key's budget: its whole burst is still there.
    statuses = [(await _whoami(suite, key))[0] for _ in range(6)]
    assert statuses == [200] * 5 + [429]


async def test_a_limit_of_n_admits_exactly_n_of_200_parallel_requests(suite) -> None:
    token = await _owner(suite)
    key, _ = await _create(suite, token, rateLimit={"requestsPerMinute": 60, "burst": 17})
    assert (await _whoami(suite, key))[0] == 200  # cached; 16 left
    results = await asyncio.gather(*(_whoami(suite, key) for _ in range(200)))
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == 16
    assert statuses.count(429) == 184
    refused = next(r for r in results if r[0] == 429)
    assert refused[1]["code"] == "rate_limited"
    assert int(refused[2]["Retry-After"]) >= 1
    assert refused[2]["Content-Type"].startswith("application/problem+json")
    # The limit refills on the clock: one interval later, one more request.
    suite.clock.advance(1.0)
    assert (await _whoami(suite, key))[0] == 200
    assert (await _whoami(suite, key))[0] == 429


async def test_two_keys_of_one_user_share_the_users_limit_across_two_gateways(suite) -> None:
    token = await _owner(suite)
    a, _ = await _create(suite, token, rateLimit={"requestsPerMinute": 600, "burst": 10})
    b, _ = await _create(suite, token, rateLimit={"requestsPerMinute": 600, "burst": 10})
    settings = suite.gateway_settings.model_copy(
        update={"user_rate_limit_per_minute": 60, "user_rate_limit_burst": 15}
    )
    # The owner's own requests so far (creating the keys) spent some of the user's budget at
    # the suite gateway's limits: let the bucket refill first, so the counts below are exact.
    suite.clock.advance(60)
    async with (
        serve_gateway(settings, clock=suite.clock) as one,
        serve_gateway(settings, clock=suite.clock) as two,
    ):
        await wait_for_feeds(one)
        await wait_for_feeds(two)

        async def ask(gateway, key: str) -> int:
            async with suite.http.get(
                gateway.base_url + "/v1/whoami", headers={"Authorization": f"Bearer {key}"}
            ) as response:
                return response.status

        calls = [ask(gw, k) for gw in (one, two) for k in (a, b) for _ in range(10)]
        statuses = await asyncio.gather(*calls)
        # 40 asked, each key could take 10, the user only 15 in all: one limit, shared by
        # both gateways through Redis, and refusals by the user spend nothing of the keys.
        assert statuses.count(200) == 15
        assert statuses.count(429) == 25


async def test_revoke_reaches_another_gateway_within_a_second(suite) -> None:
    token = await _owner(suite)
    key, api_key = await _create(suite, token)
    async with serve_gateway(suite.gateway_settings, clock=suite.clock) as other:
        await wait_for_feeds(other)

        async def on_other() -> int:
            async with suite.http.get(
                other.base_url + "/v1/whoami", headers={"Authorization": f"Bearer {key}"}
            ) as response:
                return response.status

        assert await on_other() == 200  # now cached on the other replica
        assert (await _whoami(suite, key))[0] == 200  # and on this one
        status, _, _ = await suite.call(
            "POST", f"/v1/api-keys/{api_key['id']}/revoke", token=token, json={}
        )
        assert status == 204
        status, body, _ = await _whoami(suite, key)  # this replica: on the very next request
        assert (status, body["code"]) == (401, "invalid_api_key")
        # The other replica: through the feed, within a second.
        await _eventually(lambda: on_other(), 401, within=1.0)
    status, one, _ = await suite.json_call("GET", f"/v1/api-keys/{api_key['id']}", token=token)
    assert one["state"] == "revoked"


async def test_rotation_overlap_and_expiry_on_the_clock(suite) -> None:
    token = await _owner(suite)
    old, api_key = await _create(suite, token)
    status, rotated, _ = await suite.json_call(
        "POST", f"/v1/api-keys/{api_key['id']}/rotate", token=token, json={"overlapSeconds": 600}
    )
    assert status == 201, rotated
    new = rotated["key"]
    assert new != old
    assert shape_of(new).type == "secret"
    assert rotated["apiKey"]["scopes"] == api_key["scopes"]
    assert (await _whoami(suite, old))[0] == 200  # the overlap: both work
    assert (await _whoami(suite, new))[0] == 200
    suite.clock.advance(601)
    status, body, _ = await _whoami(suite, old)
    assert (status, body["code"]) == (401, "invalid_api_key")
    assert (await _whoami(suite, new))[0] == 200
    _, listed, _ = await suite.json_call("GET", f"/v1/api-keys/{api_key['id']}", token=token)
    assert listed["replacedBy"] == rotated["apiKey"]["id"]
    # Expiry: a key made to expire in an hour answers key_expired after it.
    token = await _owner(suite, "second@example.com")  # a fresh login (recent auth)
    expires = (suite.clock.now() + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    short, _ = await _create(suite, token, expiresAt=expires)
    assert (await _whoami(suite, short))[0] == 200
    suite.clock.advance(3601)
    status, body, _ = await _whoami(suite, short)
    assert (status, body["code"]) == (401, "key_expired")


async def test_publishable_keys_are_bound_to_their_origins(suite) -> None:
    token = await _owner(suite)
    status, body, _ = await suite.json_call(
        "POST",
        "/v1/api-keys",
        token=token,
        json={"name": "widget", "type": "publishable", "scopes": ["chats:write"]},
    )
    assert (status, body["code"]) == (400, "origins_required")
    status, body, _ = await suite.json_call(
        "POST",
        "/v1/api-keys",
        token=token,
        json={
            "name": "widget",
            "type": "publishable",
            "scopes": ["chats:read"],
            "allowedOrigins": [ORIGIN],
        },
    )
    assert (status, body["code"]) == (400, "scope_not_allowed")
    key, _ = await _create(
        suite, token, type="publishable", scopes=["chats:write"], allowedOrigins=[ORIGIN]
    )
    assert key.startswith("pk_live_")
    assert (await _whoami(suite, key, Origin=ORIGIN))[0] == 200
    for origin in ("https://evil.example.com", ORIGIN + ".evil.com", "http://shop.example.com"):
        status, body, _ = await _whoami(suite, key, Origin=origin)
        assert (status, body["code"]) == (403, "origin_not_allowed"), origin
    status, body, _ = await _whoami(suite, key)  # no Origin at all
    assert (status, body["code"]) == (403, "origin_not_allowed")


async def test_bad_input_gets_stable_codes_and_creates_nothing(suite) -> None:
    token = await _owner(suite)
    past = (suite.clock.now() - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    cases = [
        ({"scopes": ["team:write"]}, "invalid_scope"),
        ({"scopes": []}, "invalid_scope"),
        ({"type": "root"}, "invalid_type"),
        ({"mode": "prod"}, "invalid_mode"),
        ({"name": ""}, "invalid_name"),
        ({"expiresAt": past}, "invalid_expiry"),
        ({"rateLimit": {"requestsPerMinute": -1, "burst": 1}}, "invalid_rate_limit"),
        ({"rateLimit": {"requestsPerMinute": 10**9, "burst": 1}}, "invalid_rate_limit"),
        ({"allowedOrigins": ["https://x.example.com"]}, "invalid_origin"),  # secret: none
    ]
    for fields, code in cases:
        body = {"name": "k", "type": "secret", "scopes": ["team:read"], **fields}
        status, answer, _ = await suite.json_call("POST", "/v1/api-keys", json=body, token=token)
        assert (status, answer["code"]) == (400, code), fields
    _, key = await _create(suite, token)
    for overlap in (-1, 7 * 24 * 3600 + 1, 10**15):
        status, answer, _ = await suite.json_call(
            "POST",
            f"/v1/api-keys/{key['id']}/rotate",
            token=token,
            json={"overlapSeconds": overlap},
        )
        assert (status, answer["code"]) == (400, "invalid_overlap"), overlap
    _, listed, _ = await suite.json_call("GET", "/v1/api-keys", token=token)
    assert len(listed["apiKeys"]) == 1  # nothing half-created


async def test_another_workspace_sees_404_and_an_old_login_cannot_create(suite) -> None:
    owner = await _owner(suite)
    _, key = await _create(suite, owner)
    stranger = await _owner(suite, "stranger@example.com")
    for method, path in (
        ("GET", f"/v1/api-keys/{key['id']}"),
        ("POST", f"/v1/api-keys/{key['id']}/revoke"),
        ("POST", f"/v1/api-keys/{key['id']}/rotate"),
        ("GET", f"/v1/api-keys/{key['id']}/events"),
    ):
        body = {} if method == "POST" else None
        status, answer, _ = await suite.json_call(method, path, token=stranger, json=body)
        assert (status, answer["code"]) == (404, "not_found"), path
    # Recent auth: eleven minutes after login, creating needs a fresh login.
    suite.clock.advance(11 * 60)
    status, body, _ = await suite.json_call(
        "POST",
        "/v1/api-keys",
        token=owner,
        json={"name": "late", "type": "secret", "scopes": ["team:read"]},
    )
    assert (status, body["code"]) == (403, "recent_auth_required")


async def test_a_reported_leak_revokes_at_once_and_emails_the_owner(suite) -> None:
    token = await _owner(suite)
    key, api_key = await _create(suite, token)
    assert (await _whoami(suite, key))[0] == 200
    # A one-character change (to a character the key does not end with: "0" would be the key
    # itself for 1 key in 62) is another key, whose checksum fails.
    changed = key[:-1] + ("1" if key.endswith("0") else "0")
    for garbage in ({"key": "sk_live_nope"}, {"key": "x" * 5000}, {}, {"key": changed}):
        status, _, _ = await suite.call("POST", "/v1/api-keys/report-leak", json=garbage)
        assert status == 202, garbage
    assert (await _whoami(suite, key))[0] == 200  # none of those was the key
    status, _, _ = await suite.call(
        "POST",
        "/v1/api-keys/report-leak",
        json={"key": key, "source": "https://gist.example.com/x"},
    )
    assert status == 202
    await _eventually(lambda: _status(suite, key), 401, within=2.0)
    mail = await suite.mail.wait_for(
        "owner@example.com",
        within=10,
        subject="An API key of your Palisade workspace was reported as leaked",
    )
    text = mail.get_body(("plain",)).get_content()
    assert api_key["prefix"] in text
    assert key not in text
    _, events, _ = await suite.json_call("GET", f"/v1/api-keys/{api_key['id']}/events", token=token)
    assert "leak_reported" in [e["type"] for e in events["events"]]


async def test_no_key_in_plaintext_in_the_database(suite) -> None:
    token = await _owner(suite)
    test_key, api_key = await _create(suite, token, mode="test")
    live_key, _ = await _create(suite, token)
    status, revealed, _ = await suite.json_call(
        "POST", f"/v1/api-keys/{api_key['id']}/reveal", token=token, json={}
    )
    assert (status, revealed["key"]) == (200, test_key)
    for key in (test_key, live_key):
        assert (await _whoami(suite, key))[0] == 200
    await suite.gateway.usage.flush()  # last-used times written too
    dump = suite.apikeys_database_dump() + suite.auth_database_dump()
    for key in (test_key, live_key):
        random_part = key[8:-6].encode()
        for form in (
            key.encode(),
            random_part,
            base64.b64encode(key.encode()),
            key.encode().hex().encode(),
        ):
            assert form not in dump
    # A revoked key is never shown again, not even a test key (a review finding).
    status, _, _ = await suite.call(
        "POST", f"/v1/api-keys/{api_key['id']}/revoke", token=token, json={}
    )
    assert status == 204
    status, body, _ = await suite.json_call(
        "POST", f"/v1/api-keys/{api_key['id']}/reveal", token=token, json={}
    )
    assert (status, body["code"]) == (409, "key_not_active")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("fail_open", "fail_open_publishable"),
    [(False, False), (True, False), (False, True)],
    ids=["fail-closed", "fail-open", "fail-open-publishable-only"],
)
async def test_redis_down_follows_the_documented_policy(
    suite, fail_open, fail_open_publishable
) -> None:
    token = await _owner(suite)
    secret, _ = await _create(suite, token)
    publishable, _ = await _create(
        suite, token, type="publishable", scopes=["chats:write"], allowedOrigins=[ORIGIN]
    )
    settings = suite.gateway_settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{_closed_port()}/0",
            "rate_limit_fail_open": fail_open,
            "rate_limit_fail_open_publishable": fail_open_publishable,
        }
    )
    async with serve_gateway(settings, clock=suite.clock) as down:
        await wait_for_feeds(down)
        for credential, lets_through in (
            (secret, fail_open),
            (token, fail_open),
            (publishable, fail_open_publishable),
        ):
            async with suite.http.get(
                down.base_url + "/v1/whoami",
                headers={"Authorization": f"Bearer {credential}", "Origin": ORIGIN},
            ) as response:
                if lets_through:
                    assert response.status == 200
                    assert "RateLimit" not in response.headers
                else:
                    assert response.status == 503
                    assert (await response.json())["code"] == "unavailable"
