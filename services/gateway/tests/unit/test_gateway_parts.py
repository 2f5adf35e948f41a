"""The gateway's pure parts: client IP rule, token cache, routes, problem mapping."""

from __future__ import annotations

import json

import grpc
import pytest

from palisade.common.clock import ManualClock
from palisade.gateway.client_ip import client_ip, parse_networks
from palisade.gateway.problems import HTTP_STATUS, problem
from palisade.gateway.routes import MethodNotAllowed, RouteNotFound, build_routes, match
from palisade.gateway.token_cache import Grant, TokenCache
from palisade_api.auth.v1 import auth_pb2

PROXIES = parse_networks(["10.0.0.0/8", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # untrusted peer: header ignored
        ("10.1.1.1", "198.51.100.1", "198.51.100.1"),
        ("10.1.1.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # spoofed left part ignored
        ("10.1.1.1", "6.6.6.6, 198.51.100.1, 10.2.2.2", "198.51.100.1"),  # two proxies
        ("10.1.1.1", "10.3.3.3, 10.2.2.2", "10.3.3.3"),  # all trusted: the leftmost
        ("10.1.1.1", None, "10.1.1.1"),
        ("10.1.1.1", "not-an-ip", "10.1.1.1"),
        ("10.1.1.1", "198.51.100.1, garbage", "10.1.1.1"),
        ("fd00::1", "2001:db8::7", "2001:db8::7"),
    ],
)
def test_client_ip_trusted_hop_rule(peer, forwarded, expected) -> None:
    assert client_ip(peer, forwarded, PROXIES) == expected


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_ip("10.1.1.1", "198.51.100.1", []) == "10.1.1.1"
    assert client_ip("not-an-ip", "198.51.100.1", []) == "not-an-ip"


def _grant(session: str = "s1", user: str = "u1", expires: float = 10**10) -> Grant:
    return Grant(user, "ws", "owner", session, expires)


def test_token_cache_bounds_age_expiry_and_size() -> None:
    clock = ManualClock()
    cache = TokenCache(max_entries=2, max_age_seconds=60, clock=clock)
    cache.put(b"a", _grant())
    assert cache.get(b"a") is not None
    clock.advance(60)
    assert cache.get(b"a") is None  # too old: ask auth again
    cache.put(b"b", _grant(expires=clock.timestamp() + 5))
    clock.advance(5)
    assert cache.get(b"b") is None  # the token itself expired
    cache.put(b"c", _grant())
    cache.put(b"d", _grant())
    assert cache.get(b"c") is not None  # c is now most recently used
    cache.put(b"e", _grant())
    assert cache.get(b"d") is None  # least recently used went first
    assert len(cache) == 2


def test_token_cache_evicts_by_hash_session_and_user() -> None:
    cache = TokenCache(max_entries=10, max_age_seconds=60, clock=ManualClock())
    cache.put(b"1", _grant("s1", "u1"))
    cache.put(b"2", _grant("s1", "u1"))
    cache.put(b"3", _grant("s2", "u1"))
    cache.put(b"4", _grant("s3", "u2"))
    cache.evict([b"4"], [])
    assert cache.get(b"4") is None
    cache.evict([], ["s1"])
    assert (cache.get(b"1"), cache.get(b"2")) == (None, None)
    assert cache.get(b"3") is not None
    cache.put(b"5", _grant("s4", "u2"))
    cache.evict_user("u1")
    assert cache.get(b"3") is None
    assert cache.get(b"5") is not None


def test_routes_come_from_the_annotations() -> None:
    routes = build_routes([(auth_pb2.DESCRIPTOR.services_by_name["AuthService"], "auth")])
    route, params = match(routes, "DELETE", "/v1/me/sessions/ses_123")
    assert (route.method.name, params) == ("RevokeSession", {"id": "ses_123"})
    assert route.full_method == "/palisade.auth.v1.AuthService/RevokeSession"
    assert match(routes, "POST", "/v1/auth/login")[0].body == "*"
    with pytest.raises(MethodNotAllowed) as caught:
        match(routes, "GET", "/v1/auth/login")
    assert caught.value.allowed == ["POST"]
    with pytest.raises(RouteNotFound):
        match(routes, "GET", "/v1/me/sessions/a/b")
    # Internal RPCs have no HTTP annotation and no route.
    assert not any(r.method.name in ("ValidateAccessToken", "WatchRevocations") for r in routes)


def test_problem_bodies_and_status_mapping() -> None:
    response = problem(429, code="rate_limited", detail="slow down", headers={"Retry-After": "3"})
    body = json.loads(response.body)
    assert response.status == 429
    assert response.content_type == "application/problem+json"
    assert body == {
        "type": "urn:palisade:problem:rate_limited",
        "title": "Too Many Requests",
        "status": 429,
        "code": "rate_limited",
        "detail": "slow down",
    }
    assert response.headers["Retry-After"] == "3"
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503
    assert HTTP_STATUS[grpc.StatusCode.UNAUTHENTICATED] == 401
    assert grpc.StatusCode.INTERNAL not in HTTP_STATUS  # falls back to a generic 500


def _route(method: str, path: str):
    routes = build_routes([(auth_pb2.DESCRIPTOR.services_by_name["AuthService"], "auth")])
    return match(routes, method, path)


def test_query_parameters_fill_scalar_fields_but_never_secrets() -> None:
    from palisade.gateway.transcode import BadRequest, build_request

    route, params = _route("DELETE", "/v1/me/sessions/ses_1")
    message = build_request(route, params, [], b"", "")
    assert message.id == "ses_1"
    route, _ = _route("POST", "/v1/auth/refresh")
    with pytest.raises(BadRequest, match="in the body"):  # a "*" body route takes no query
        build_request(route, {}, [("refreshToken", "plsd_rt_x")], b"{}", "application/json")
    route, _ = _route("GET", "/v1/me")
    with pytest.raises(BadRequest, match="unknown or unsafe"):
        build_request(route, {}, [("access_token", "x")], b"", "")
    with pytest.raises(BadRequest, match="takes no body"):
        build_request(route, {}, [], b"{}", "application/json")


async def test_a_validation_racing_a_revocation_is_not_cached() -> None:
    """The answer to a check that started before an eviction may be stale: never cache it."""
    import asyncio

    from google.protobuf.timestamp_pb2 import Timestamp

    from palisade.common.caller import AssertionSigner
    from palisade.common.edge_keys import KeySource, ServiceKeys
    from palisade.gateway.edge_auth import EdgeAuthenticator

    release = asyncio.Event()

    class SlowAuth:
        async def ValidateAccessToken(self, request, **_call_options):
            await release.wait()
            expires = Timestamp(seconds=int(clock.timestamp()) + 3600)
            return auth_pb2.ValidateAccessTokenResponse(
                user_id="u1", workspace_id="ws", role="owner", session_id="s1", expires_at=expires
            )

    clock = ManualClock()
    cache = TokenCache(max_entries=10, max_age_seconds=60, clock=clock)
    keys = KeySource.fixed(ServiceKeys.generate("gateway"))
    signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=60)
    edge = EdgeAuthenticator(stub=SlowAuth(), signer=signer, cache=cache, timeout=1)
    edge.revocations.receive(auth_pb2.Revocation(heartbeat=True))  # the feed has caught up
    pending = asyncio.create_task(edge.grant_for("plsd_at_" + "A" * 43))
    await asyncio.sleep(0)
    cache.evict([], ["s1"])  # the revocation notice arrives while auth is answering
    release.set()
    await pending  # this request still gets its (then valid) answer...
    assert len(cache) == 0  # ...but the next one must ask auth again
    await edge.grant_for("plsd_at_" + "A" * 43)
    assert len(cache) == 1  # with no eviction in between, answers are cached


def test_duplicate_keys_and_aliases_are_refused() -> None:
    from palisade.gateway.transcode import BadRequest, build_request

    route, _ = _route("POST", "/v1/me/sessions/revoke-all")
    with pytest.raises(BadRequest, match="given twice"):
        build_request(
            route, {}, [], b'{"keepCurrent": true, "keep_current": false}', "application/json"
        )
    route, _ = _route("POST", "/v1/auth/login")
    with pytest.raises(BadRequest, match="not valid JSON"):
        build_request(route, {}, [], b'{"email": "a@b.co", "email": "c@d.co"}', "application/json")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(scheme) -> None:
    from palisade.gateway.edge_auth import bearer_token

    assert bearer_token(f"{scheme} plsd_at_abc") == "plsd_at_abc"


def test_user_agent_claims_stay_small_whatever_the_characters() -> None:
    from palisade.common.caller import AssertionSigner, AssertionVerifier
    from palisade.common.edge_keys import KeyDocument, KeySource

    master, clock = KeyDocument.generate(), ManualClock()
    signer = AssertionSigner(
        keys=KeySource.from_master(master, "gateway"), clock=clock, ttl_seconds=60
    )
    verifier = AssertionVerifier(keys=KeySource.from_master(master, "auth"), clock=clock)
    method = "/palisade.auth.v1.AuthService/SignUp"
    for agent in ("Mozilla " + "é" * 504, "🦊" * 511, "x" * 5000):
        token = signer.sign(
            audience="auth", method=method, principal="anonymous", request_id="r", user_agent=agent
        )
        assert len(token) <= 4096
        assert verifier.verify(token, method=method).user_agent is not None


def test_access_rules_for_people_and_keys() -> None:
    from palisade.gateway.access import (
        Forbidden,
        KeyGrant,
        check_key,
        check_key_allowed,
        check_person,
        is_api_key,
    )
    from palisade_api.common.v1 import access_pb2

    admins_only = access_pb2.AccessRule(access=access_pb2.ACCESS_USER, roles=["owner", "admin"])
    check_person(admins_only, _grant())  # owner
    with pytest.raises(Forbidden) as caught:
        check_person(admins_only, Grant("u2", "ws", "member", "s2", 10**10))
    assert caught.value.code == "insufficient_role"
    check_person(
        access_pb2.AccessRule(access=access_pb2.ACCESS_USER),
        Grant("u2", "ws", "member", "s2", 10**10),
    )  # no roles listed: any member

    people_only = access_pb2.AccessRule(access=access_pb2.ACCESS_USER)
    with pytest.raises(Forbidden) as caught:
        check_key_allowed(people_only)
    assert caught.value.code == "people_only"
    scoped = access_pb2.AccessRule(
        access=access_pb2.ACCESS_USER, api_keys=True, scope="visitors:read"
    )
    key = KeyGrant("key_1", "ws", frozenset({"chats:read"}), False, ())
    with pytest.raises(Forbidden) as caught:
        check_key(scoped, key)
    assert caught.value.code == "insufficient_scope"
    check_key(scoped, KeyGrant("key_2", "ws", frozenset({"visitors:read"}), False, ()))

    assert is_api_key("sk_live_abc")
    assert is_api_key("pk_test_abc")
    assert not is_api_key("plsd_at_abc")
    assert not is_api_key("sk_abc")
