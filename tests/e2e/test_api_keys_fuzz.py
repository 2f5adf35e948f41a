"""Odd input at the key routes never gets a 5xx (SECURITY.md 39; issue 11 "Bad input"), and
lists page through the gateway (written by a reviewer; the NUL and paging cases were bugs)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BASE = {"name": "k", "type": "secret", "scopes": ["team:read"]}
BODIES = [
    {**BASE, "name": None},
    {**BASE, "name": 5},
    {**BASE, "name": "x" * 101},
    {**BASE, "name": "\ud800"},
    {**BASE, "name": "a\u2028b"},
    {**BASE, "scopes": None},
    {**BASE, "scopes": "team:read"},
    {**BASE, "scopes": [None]},
    {**BASE, "scopes": [1]},
    {**BASE, "scopes": ["team:read"] * 10_000},
    {**BASE, "type": None},
    {**BASE, "type": ["secret"]},
    {**BASE, "mode": None},
    {**BASE, "mode": "TEST"},
    {**BASE, "expiresAt": None},
    {**BASE, "expiresAt": "0001-01-01T00:00:00Z"},
    {**BASE, "expiresAt": "9999-12-31T23:59:59Z"},
    {**BASE, "expiresAt": "10000-01-01T00:00:00Z"},
    {**BASE, "expiresAt": "2030-01-01T00:00:00+14:00"},
    {**BASE, "expiresAt": 1e300},
    {**BASE, "expiresAt": {"seconds": 1}},
    {**BASE, "expiresAt": "2030-13-45T99:99:99Z"},
    {**BASE, "rateLimit": None},
    {**BASE, "rateLimit": {}},
    {**BASE, "rateLimit": {"requestsPerMinute": 2**31, "burst": 1}},
    {**BASE, "rateLimit": {"requestsPerMinute": 2**63, "burst": 1}},
    {**BASE, "rateLimit": {"requestsPerMinute": 1e400, "burst": 1}},
    {**BASE, "rateLimit": {"requestsPerMinute": "NaN", "burst": 1}},
    {**BASE, "rateLimit": {"requestsPerMinute": 1.5, "burst": 1}},
    {**BASE, "rateLimit": {"requestsPerMinute": 1000000, "burst": 100000}},
    {**BASE, "rateLimit": {"requestsPerMinute": 1, "burst": 100000}},
    {**BASE, "rateLimit": [1, 2]},
    {**BASE, "allowedOrigins": None},
    {
        "name": "p",
        "type": "publishable",
        "scopes": ["chats:write"],
        "allowedOrigins": ["https://" + "a" * 63 + "." + "b" * 63 + ".example.com:65535"],
    },
    {"name": "p", "type": "publishable", "scopes": ["chats:write"], "allowedOrigins": [None]},
    {"name": "p", "type": "publishable", "scopes": ["chats:write"], "allowedOrigins": ["null"]},
    {
        "name": "p",
        "type": "publishable",
        "scopes": ["chats:write"],
        "allowedOrigins": ["https://[::1]:99999"],
    },
    {
        "name": "p",
        "type": "publishable",
        "scopes": ["chats:write"],
        "allowedOrigins": ["https://[" + ":" * 250 + "]"],
    },
    {
        "name": "p",
        "type": "publishable",
        "scopes": ["chats:write"],
        "allowedOrigins": ["https://x." + "a" * 290],
    },
    {**BASE, "unknownField": 1},
    {**BASE, "id": "key_x"},
    [],
    "string",
    None,
    123,
]


async def test_create_never_5xx(suite) -> None:
    token = (await suite.sign_up_and_log_in("fuzz@example.com"))["accessToken"]
    bad = []
    for body in BODIES:
        status, _headers, raw = await suite.call(
            "POST",
            "/v1/api-keys",
            token=token,
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        if status >= 500:
            bad.append((status, json.dumps(body)[:120], raw[:200]))
        suite.clock.advance(1)  # keep the user's limit out of the picture
    assert not bad, bad


async def test_rate_limit_extremes_then_use_the_key(suite) -> None:
    """A key the service accepted must also be usable: the gateway builds a Limit from it."""
    token = (await suite.sign_up_and_log_in("fuzz2@example.com"))["accessToken"]
    for rpm, burst in ((1_000_000, 100_000), (1, 100_000), (1, 1)):
        status, answer, _ = await suite.json_call(
            "POST",
            "/v1/api-keys",
            token=token,
            json={**BASE, "rateLimit": {"requestsPerMinute": rpm, "burst": burst}},
        )
        assert status == 201, answer
        status, body, _ = await suite.json_call("GET", "/v1/whoami", token=answer["key"])
        assert status == 200, (rpm, burst, body)


async def test_key_id_paths_and_paging_never_5xx(suite) -> None:
    token = (await suite.sign_up_and_log_in("fuzz3@example.com"))["accessToken"]
    ids = ["x" * 41, "x" * 5000, "%0d%0a", "%F0%9F%98%80", "..", "%2e%2e", "a%2Fb", "%ff"]
    bad = []
    for key_id in ids:
        for method, suffix, body in (
            ("GET", "", None),
            ("POST", "/rotate", {}),
            ("POST", "/rotate", {"overlapSeconds": "9" * 30}),
            ("POST", "/rotate", {"overlapSeconds": -(2**63)}),
            ("POST", "/revoke", {}),
            ("POST", "/reveal", {}),
            ("GET", "/events?pageSize=-1", None),
            ("GET", "/events?pageToken=%%%", None),
        ):
            status, _, raw = await suite.call(
                method, f"/v1/api-keys/{key_id}{suffix}", token=token, json=body
            )
            suite.clock.advance(1)
            if status >= 500 or status == 429:
                bad.append((status, method, key_id, suffix))
    for query in (
        "pageSize=-1",
        "pageSize=99999999999",
        "pageToken=AAAA",
        "pageToken=" + "A" * 5000,
        "pageToken=%FF",
        "pageToken=eyJ0IjoiMjAyNi0wMS0wMSIsImkiOiJ4In0",
        "pageToken=eyJ0IjogMSwgImkiOiAyfQ",
        "pageToken=bnVsbA",
        "pageToken=W10",
    ):
        status, _, raw = await suite.call("GET", f"/v1/api-keys?{query}", token=token)
        suite.clock.advance(1)
        if status >= 500:
            bad.append((status, "GET", "/v1/api-keys", query, raw[:200]))
    assert not bad, bad


async def test_a_second_page_is_fetched_through_the_gateway(suite) -> None:
    """Regression: the gateway refused every query field whose name holds "token", so a
    nextPageToken could never be sent back and only the newest page was reachable."""
    token = (await suite.sign_up_and_log_in("pages@example.com"))["accessToken"]
    for _ in range(2):
        status, _, _ = await suite.json_call("POST", "/v1/api-keys", token=token, json=BASE)
        assert status == 201
    status, first, _ = await suite.json_call("GET", "/v1/api-keys?pageSize=1", token=token)
    assert status == 200
    assert first["nextPageToken"]
    status, second, _ = await suite.json_call(
        "GET", f"/v1/api-keys?pageSize=1&pageToken={first['nextPageToken']}", token=token
    )
    assert status == 200, second
    assert [k["id"] for k in second["apiKeys"]] != [k["id"] for k in first["apiKeys"]]
    assert len(second["apiKeys"]) == 1


async def test_report_leak_never_5xx(suite) -> None:
    bad = []
    for body in (
        {"key": None},
        {"key": 5},
        {"key": ["sk_live_x"]},
        {"source": "x" * 100_000},
        {"key": "sk_live_" + "A" * 38, "source": None},
        {"key": "sk_live_" + "A" * 38, "source": "\x00\r\n" * 50},
        [],
    ):
        status, _, raw = await suite.call(
            "POST",
            "/v1/api-keys/report-leak",
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        if status >= 500:
            bad.append((status, body, raw[:200]))
    assert not bad, bad


async def test_a_nul_or_odd_key_id_is_a_404(suite) -> None:
    """Regression: a %00 in {id} reached Postgres as a NUL in a text parameter, which the
    driver refuses: 500 on every key route."""
    token = (await suite.sign_up_and_log_in("nul@example.com"))["accessToken"]
    statuses = {}
    for method, path in (
        ("GET", "/v1/api-keys/%00"),
        ("POST", "/v1/api-keys/%00/revoke"),
        ("POST", "/v1/api-keys/%00/rotate"),
        ("POST", "/v1/api-keys/%00/reveal"),
        ("GET", "/v1/api-keys/%00/events"),
        ("GET", "/v1/api-keys/a%00b"),
    ):
        status, _, _ = await suite.call(
            method, path, token=token, json={} if method == "POST" else None
        )
        statuses[(method, path)] = status
    assert all(s == 404 for s in statuses.values()), statuses
