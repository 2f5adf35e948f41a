"""A client's view: the identity routes of HTTP-API.md through the gateway, over real HTTP."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
PROBLEM = "application/problem+json"


def _json(body: bytes) -> dict:
    return json.loads(body)


async def test_first_session_sign_up_log_in_me_refresh_log_out(suite) -> None:
    status, headers, body = await suite.call(
        "POST",
        "/v1/auth/signup",
        json={
            "email": "ada@example.com",
            "password": "correct horse battery staple",
            "name": "Ada Lovelace",
            "workspaceName": "Analytical Engines",
        },
    )
    assert status == 201
    created = _json(body)
    assert set(created) == {"userId", "workspaceId"}

    status, headers, body = await suite.call(
        "POST",
        "/v1/auth/login",
        json={"email": "ADA@example.com", "password": "correct horse battery staple"},
    )
    assert status == 200
    tokens = _json(body)
    assert set(tokens) == {"accessToken", "refreshToken", "expiresIn", "tokenType"}
    assert tokens["tokenType"] == "Bearer"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Content-Type"].startswith("application/json")

    status, _, body = await suite.call("GET", "/v1/me", token=tokens["accessToken"])
    assert status == 200
    me = _json(body)
    assert (me["userId"], me["email"], me["name"], me["role"]) == (
        created["userId"],
        "ada@example.com",
        "Ada Lovelace",
        "owner",
    )

    status, _, body = await suite.call(
        "POST", "/v1/auth/refresh", json={"refresh_token": tokens["refreshToken"]}
    )  # snake ok
    assert status == 200
    rotated = _json(body)
    assert rotated["refreshToken"] != tokens["refreshToken"]

    status, _, body = await suite.call("GET", "/v1/me/sessions", token=rotated["accessToken"])
    assert status == 200
    [session] = _json(body)["sessions"]
    assert session["current"] is True
    assert session["ip"] == "127.0.0.1"

    status, _, body = await suite.call("POST", "/v1/auth/logout", token=rotated["accessToken"])
    assert (status, body) == (204, b"")
    status, headers, body = await suite.call("GET", "/v1/me", token=rotated["accessToken"])
    assert status == 401
    assert headers["Content-Type"].startswith(PROBLEM)
    assert _json(body)["code"] == "session_revoked"


async def test_a_revoked_token_is_refused_on_the_very_next_request(suite) -> None:
    tokens = await suite.sign_up_and_log_in("cache@example.com")
    other = await suite.call(
        "POST",
        "/v1/auth/login",
        json={"email": "cache@example.com", "password": "correct horse battery staple"},
    )
    other_tokens = _json(other[2])
    # Both tokens validated once: now answered from the gateway's cache.
    for token in (tokens["accessToken"], other_tokens["accessToken"]):
        assert (await suite.call("GET", "/v1/me", token=token))[0] == 200
    assert len(suite.gateway.cache) == 2
    # Revoking the other session through the API: the feed must evict it before we ask again.
    sessions = _json((await suite.call("GET", "/v1/me/sessions", token=tokens["accessToken"]))[2])
    target = next(s["id"] for s in sessions["sessions"] if not s["current"])
    status, _, _ = await suite.call(
        "DELETE", f"/v1/me/sessions/{target}", token=tokens["accessToken"]
    )
    assert status == 204
    for _ in range(100):  # the eviction travels over the feed; no request may slip through
        if len(suite.gateway.cache) == 1:
            break
        import asyncio

        await asyncio.sleep(0.01)
    status, _, body = await suite.call("GET", "/v1/me", token=other_tokens["accessToken"])
    assert status == 401
    assert _json(body)["code"] == "session_revoked"


async def test_errors_are_problem_json_with_stable_codes(suite) -> None:
    await suite.sign_up_and_log_in("errors@example.com")
    cases = [
        (
            "POST",
            "/v1/auth/login",
            {"email": "errors@example.com", "password": "wrong one!!"},
            401,
            "invalid_credentials",
        ),
        (
            "POST",
            "/v1/auth/login",
            {"email": "nobody@example.com", "password": "wrong one!!"},
            401,
            "invalid_credentials",
        ),
        (
            "POST",
            "/v1/auth/signup",
            {"email": "x@example.com", "password": "password", "name": "X"},
            400,
            "password_too_common",
        ),
        ("POST", "/v1/auth/refresh", {"refreshToken": "garbage"}, 401, "invalid_token"),
        ("GET", "/v1/me", None, 401, "unauthenticated"),
        ("GET", "/v1/nothing-here", None, 404, "not_found"),
        ("PUT", "/v1/auth/login", None, 405, "method_not_allowed"),
        (
            "POST",
            "/v1/auth/login",
            {"email": "a@b.co", "password": "x", "admin": True},
            400,
            "invalid_request",
        ),
        ("POST", "/v1/auth/login", {"email": ["a"], "password": "x"}, 400, "invalid_request"),
    ]
    for method, path, payload, status, code in cases:
        got, headers, body = await suite.call(method, path, json=payload)
        assert (got, _json(body)["code"]) == (status, code), (method, path, payload)
        assert headers["Content-Type"].startswith(PROBLEM)
        problem = _json(body)
        assert problem["status"] == status
        assert {"type", "title", "detail"} <= set(problem)
        assert "Traceback" not in body.decode()


async def test_unknown_and_known_emails_answer_with_the_same_bytes(suite) -> None:
    await suite.sign_up_and_log_in("known@example.com")
    answers = []
    for email in ("known@example.com", "unknown@example.com"):
        status, _, body = await suite.call(
            "POST", "/v1/auth/login", json={"email": email, "password": "not it at all"}
        )
        answers.append((status, body))
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_request"),
        (b"\xff\xfe{}", "application/json", 400, "invalid_request"),
        (b"[1, 2]", "application/json", 400, "invalid_request"),
        (b"email=a", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400, "invalid_request"),  # deep nesting
        (b"{" + b'"a":1,' * 5000 + b'"b":2}', "application/json", 413, "payload_too_large"),
    ],
)
async def test_malformed_and_oversized_bodies_get_a_clean_4xx(
    suite, data, content_type, status, code
) -> None:
    got, headers, body = await suite.call(
        "POST", "/v1/auth/login", data=data, headers={"Content-Type": content_type}
    )
    assert got == status
    assert _json(body)["code"] == code
    assert headers["Content-Type"].startswith(PROBLEM)


async def test_secrets_in_the_query_string_are_refused(suite) -> None:
    tokens = await suite.sign_up_and_log_in("query@example.com")
    # A token in the URL is never taken as a credential...
    status, _, body = await suite.call("GET", f"/v1/me?access_token={tokens['accessToken']}")
    assert (status, _json(body)["code"]) == (401, "unauthenticated")
    # ...nor accepted as input, even from a signed-in caller.
    status, _, body = await suite.call(
        "GET", f"/v1/me?access_token={tokens['accessToken']}", token=tokens["accessToken"]
    )
    assert (status, _json(body)["code"]) == (400, "invalid_request")
    status, _, body = await suite.call(
        "POST", f"/v1/auth/refresh?refreshToken={tokens['refreshToken']}", json={}
    )
    assert (status, _json(body)["code"]) == (400, "invalid_request")


async def test_spoofed_identity_headers_are_ignored(suite) -> None:
    alice = await suite.sign_up_and_log_in("alice@example.com")
    await suite.sign_up_and_log_in("mallory@example.com")
    spoof = {
        "X-User-Id": "usr_someone",
        "X-Palisade-Caller": "forged",
        "X-Workspace-Id": "ws_x",
        "X-Forwarded-For": "203.0.113.99",
        "X-Real-IP": "203.0.113.99",
    }
    status, _, body = await suite.call("GET", "/v1/me", token=alice["accessToken"], headers=spoof)
    assert status == 200
    assert _json(body)["email"] == "alice@example.com"
    status, _, body = await suite.call("GET", "/v1/me", headers=spoof)
    assert status == 401
    # The client IP recorded for the session is the socket's, not the spoofed header's.
    status, _, body = await suite.call("GET", "/v1/me/sessions", token=alice["accessToken"])
    assert {s["ip"] for s in _json(body)["sessions"]} == {"127.0.0.1"}


async def test_headers_request_ids_health_and_no_banners(suite) -> None:
    status, headers, body = await suite.call(
        "GET", "/healthz", headers={"X-Request-Id": "req-e2e-42"}
    )
    assert status == 200
    assert headers["X-Request-Id"] == "req-e2e-42"
    assert headers["Server"] == "palisade"
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, body = await suite.call("GET", "/readyz")
    assert (status, _json(body)["status"]) == (200, "ready")
    status, headers, _ = await suite.call("GET", "/v1/me")
    assert len(headers["X-Request-Id"]) >= 16
    assert "Access-Control-Allow-Origin" not in headers  # CORS is closed by default


async def test_gateway_metrics_by_route_template_and_cache_use(suite) -> None:
    import asyncio
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    tokens = await suite.sign_up_and_log_in("metrics@example.com")
    for _ in range(3):
        await suite.call("GET", "/v1/me/sessions", token=tokens["accessToken"])
    await suite.call("DELETE", "/v1/me/sessions/ses_doesnotexist", token=tokens["accessToken"])

    def scrape() -> str:
        url = f"http://127.0.0.1:{suite.gateway.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    text = await asyncio.to_thread(scrape)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    requests = {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for s in samples
        if s.name == "palisade_gateway_requests_total"
    }
    assert requests[("/v1/me/sessions", "GET", "200")] == 3
    assert requests[("/v1/me/sessions/{id}", "DELETE", "404")] == 1  # templates, never ids
    lookups = {
        s.labels["result"]: s.value
        for s in samples
        if s.name == "palisade_gateway_token_cache_lookups_total"
    }
    assert lookups["miss"] >= 1
    assert lookups["hit"] >= 3
    assert "ses_doesnotexist" not in text
    assert tokens["accessToken"] not in text


async def test_review_hardening_over_http(suite) -> None:
    tokens = await suite.sign_up_and_log_in("hardening@example.com")
    # Authentication is checked before the input: no token, any input -> 401.
    status, _, body = await suite.call("GET", "/v1/me?x=1")
    assert (status, _json(body)["code"]) == (401, "unauthenticated")
    # Non-ASCII User-Agents do not break requests.
    for agent in ("Mozilla " + "é" * 504, "🦊" * 511):
        status, _, _ = await suite.call(
            "GET", "/v1/me", token=tokens["accessToken"], headers={"User-Agent": agent}
        )
        assert status == 200
    status, _, _ = await suite.call(
        "GET", "/v1/me", headers={"Authorization": f"bearer {tokens['accessToken']}"}
    )
    assert status == 200


async def test_malformed_http_gets_problem_json_without_echo_or_banner(suite) -> None:
    import asyncio

    secret = "plsd_at_" + "S" * 43
    huge = "Bearer " + secret + "A" * 9000
    reader, writer = await asyncio.open_connection("127.0.0.1", suite.gateway.http_port)
    writer.write(f"GET /v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: {huge}\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b" 400 " in head.split(b"\r\n")[0]
    assert b"application/problem+json" in head
    assert b"aiohttp" not in head
    assert b"Python" not in head
    assert secret.encode() not in raw
    assert json.loads(body)["code"] == "invalid_request"


async def test_every_forwarded_for_line_counts_behind_a_trusted_proxy(suite) -> None:
    from multidict import CIMultiDict

    from palisade.gateway.server import serve_gateway

    settings = suite.gateway_settings.model_copy(update={"trusted_proxies": ["127.0.0.1/32"]})
    async with serve_gateway(settings, clock=suite.clock) as proxied:
        headers = CIMultiDict(
            [
                ("Content-Type", "application/json"),
                ("X-Forwarded-For", "6.6.6.6"),  # written by the client
                ("X-Forwarded-For", "203.0.113.9"),
            ]
        )  # added by our proxy
        await suite.call(
            "POST",
            "/v1/auth/signup",
            json={
                "email": "proxied@example.com",
                "password": "correct horse battery staple",
                "name": "P",
            },
        )
        async with suite.http.post(
            proxied.base_url + "/v1/auth/login",
            headers=headers,
            data=json.dumps(
                {"email": "proxied@example.com", "password": "correct horse battery staple"}
            ),
        ) as response:
            tokens = await response.json()
        _, _, body = await suite.call("GET", "/v1/me/sessions", token=tokens["accessToken"])
    assert {s["ip"] for s in _json(body)["sessions"]} == {"203.0.113.9"}


@pytest.mark.parametrize("key", ["sk_live_" + "A" * 32, "pk_test_" + "B" * 32])
async def test_api_keys_are_refused_on_people_only_routes(suite, key) -> None:
    status, _, body = await suite.call("GET", "/v1/me", token=key)
    assert (status, _json(body)["code"]) == (403, "people_only")
