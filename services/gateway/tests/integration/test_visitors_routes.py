"""The visitors and chats routes through the gateway, with a scripted visitors upstream and the
real key authenticator over a spy key service: the HTTP mapping (201/204, query parameters,
literal paths before templates, error codes), publishable keys (origins, secret-key-only
routes) and CORS (preflights on publishable routes only, the actual answer's headers).

The whole suite over real HTTP is in tests/e2e/test_visitors_over_http.py and its siblings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from palisade.common.api_key_format import generate
from palisade.common.caller import AssertionSigner, AssertionVerifier, Caller
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeyDocument, KeySource
from palisade.common.edges import EDGES, Edge
from palisade.gateway.app import Gateway, Upstreams
from palisade.gateway.edge_auth import EdgeAuthenticator
from palisade.gateway.http_server import make_runner
from palisade.gateway.key_auth import KeyAuthenticator, KeyCache, UsageRecorder
from palisade.gateway.limits import RateLimitPolicy
from palisade.gateway.metrics import GatewayMetrics
from palisade.gateway.rate_limit import Limit, LocalRateLimiter
from palisade.gateway.routes import build_routes
from palisade.gateway.token_cache import TokenCache
from palisade_api.apikeys.v1 import apikeys_pb2 as ak
from palisade_api.visitors.v1 import visitors_pb2 as v

from .conftest import TOKEN, SpyAuth, rpc_error

SHOP = "https://shop.example.com"
DASHBOARD = "https://dashboard.example.com"
_VISITORS = "/palisade.visitors.v1.VisitorsService/"
_CHATS = "/palisade.visitors.v1.ChatsService/"


@dataclass
class SpyKeys:
    """Stands for the apikeys stub as the key authenticator uses it: keys from a table."""

    keys: dict[bytes, ak.VerifiedApiKey] = field(default_factory=dict)

    def add(
        self,
        key_type: str,
        scopes: list[str],
        *,
        origins: tuple[str, ...] = (),
        mode: str = "live",
        burst: int = 1000,
    ) -> str:
        key = generate(key_type, mode)
        self.keys[hashlib.sha256(key.encode()).digest()] = ak.VerifiedApiKey(
            key_id=f"key_{len(self.keys)}",
            workspace_id="ws_1",
            type=key_type,
            mode=mode,
            scopes=scopes,
            allowed_origins=list(origins),
            rate_limit=ak.RateLimit(requests_per_minute=60_000, burst=burst),
            created_by="usr_1",
        )
        return key

    async def VerifyApiKey(self, request: Any, **_options: Any) -> Any:
        reply = self.keys.get(request.key_hash)
        if reply is None:
            raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "invalid_api_key")
        return reply

    async def RecordKeyUsage(self, request: Any, **_options: Any) -> Any:
        return ak.RecordKeyUsageResponse()


Answer = Callable[[Message], Message]


@dataclass
class ScriptedVisitors:
    """Stands for the visitors channel: answers each method as the test scripted it (the
    request message is recorded with the caller's metadata)."""

    answers: dict[str, Answer] = field(default_factory=dict)
    calls: list[tuple[str, Message, dict[str, str]]] = field(default_factory=list)

    def unary_unary(self, method: str, request_serializer: Any, response_deserializer: Any) -> Any:
        async def call(message: Message, *, metadata: Any = (), **_options: Any) -> Any:
            self.calls.append((method, message, dict(metadata)))
            answer = self.answers.get(method)
            if answer is None:
                return response_deserializer(b"")
            return answer(message)

        return call

    def methods(self) -> list[str]:
        return [method.rsplit("/", 1)[1] for method, _, _ in self.calls]


@dataclass
class Harness:
    http: aiohttp.ClientSession
    base_url: str
    upstream: ScriptedVisitors
    keys: SpyKeys
    verifier: AssertionVerifier  # the visitors service's: reads what the gateway asserted

    def last_caller(self) -> Caller:
        method, _, metadata = self.upstream.calls[-1]
        return self.verifier.verify(metadata["x-palisade-caller"], method=method)

    async def call(
        self,
        method: str,
        path: str,
        *,
        credential: str | None = None,
        origin: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, Any, Any]:
        sent = dict(headers or {})
        if credential is not None:
            sent["Authorization"] = f"Bearer {credential}"
        if origin is not None:
            sent["Origin"] = origin
        async with self.http.request(
            method, self.base_url + path, headers=sent, **kwargs
        ) as response:
            body = await response.read()
            parsed = json.loads(body) if body else None
            return response.status, response.headers.copy(), parsed

    async def preflight(
        self, path: str, origin: str | None, method: str | None = "POST"
    ) -> tuple[int, Any]:
        headers = {}
        if method is not None:
            headers["Access-Control-Request-Method"] = method
            headers["Access-Control-Request-Headers"] = "authorization, content-type"
        status, answer_headers, _ = await self.call("OPTIONS", path, origin=origin, headers=headers)
        return status, answer_headers


def _raise(code: grpc.StatusCode, error_code: str) -> Answer:
    def answer(_message: Message) -> Message:
        raise rpc_error(code, error_code)

    return answer


@pytest.fixture
async def visitors_gateway() -> AsyncIterator[Harness]:
    clock = ManualClock()
    auth = SpyAuth(clock)
    auth.allow(TOKEN)
    keys = SpyKeys()
    upstream = ScriptedVisitors()
    edges = tuple(EDGES)
    if not any(edge.name == "gateway:visitors" for edge in edges):
        edges = (*edges, Edge("gateway", "visitors", delegates=True))
    master = KeyDocument.generate(edges)
    signer = AssertionSigner(
        keys=KeySource.from_master(master, "gateway", edges), clock=clock, ttl_seconds=60
    )
    verifier = AssertionVerifier(keys=KeySource.from_master(master, "visitors", edges), clock=clock)
    edge = EdgeAuthenticator(
        stub=auth,
        signer=signer,
        cache=TokenCache(max_entries=100, max_age_seconds=60, clock=clock),
        timeout=1,
        clock=clock,
    )
    key_auth = KeyAuthenticator(
        stub=keys,
        signer=signer,
        cache=KeyCache(max_entries=100, max_age_seconds=60, clock=clock),
        usage=UsageRecorder(stub=keys, signer=signer, clock=clock, timeout=1),
        timeout=1,
        clock=clock,
    )
    services = [
        (v.DESCRIPTOR.services_by_name["VisitorsService"], "visitors"),
        (v.DESCRIPTOR.services_by_name["ChatsService"], "visitors"),
        (ak.DESCRIPTOR.services_by_name["ApiKeysService"], "apikeys"),  # a people-only route
    ]
    app = Gateway(
        routes=build_routes(services),
        upstreams=Upstreams({"visitors": upstream, "apikeys": upstream}),  # type: ignore[dict-item]
        signer=signer,
        edge=edge,
        metrics=GatewayMetrics(CollectorRegistry()),
        trusted_proxies=[],
        timeout=1,
        max_body_bytes=16 * 1024,
        cors_origins=[DASHBOARD],
        rate_limits=RateLimitPolicy(
            limiter=LocalRateLimiter(clock=clock), user_limit=Limit(60_000, 10_000)
        ),
        api_keys=key_auth,
    )
    runner = make_runner(app.application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            yield Harness(http, f"http://127.0.0.1:{port}", upstream, keys, verifier)
    finally:
        await runner.cleanup()


def _visitor(message: Message) -> Message:
    assert isinstance(message, v.CreateVisitorRequest)
    return v.Visitor(id="vis_" + "a" * 32, name=message.name, email=message.email)


async def test_the_http_mapping_of_visitors(visitors_gateway: Harness) -> None:
    h = visitors_gateway
    h.upstream.answers[_VISITORS + "CreateVisitor"] = _visitor
    status, _, body = await h.call(
        "POST", "/v1/visitors", credential=TOKEN, json={"name": "Ada", "email": "a@example.com"}
    )
    assert status == 201
    assert body == {"id": "vis_" + "a" * 32, "name": "Ada", "email": "a@example.com"}
    status, _, body = await h.call("DELETE", "/v1/visitors/vis_1", credential=TOKEN)
    assert (status, body) == (204, None)
    # Query parameters fill FindVisitorsRequest; a + in a phone number is sent as %2B (a bare
    # + in a query string is a space, as in every form-encoded URL).
    for query, expected in (
        ("email=Ada%40Example.com", v.FindVisitorsRequest(email="Ada@Example.com")),
        ("phone=%2B49%20151%20234", v.FindVisitorsRequest(phone="+49 151 234")),
        ("phone=+49", v.FindVisitorsRequest(phone=" 49")),
    ):
        status, _, body = await h.call("GET", f"/v1/visitors?{query}", credential=TOKEN)
        assert (status, body) == (200, {}), query
        assert h.upstream.calls[-1][1] == expected
    status, _, body = await h.call("GET", "/v1/visitors?name=Ada", credential=TOKEN)
    assert (status, body["code"]) == (400, "invalid_request")  # not a field of the lookup
    assert h.upstream.methods() == ["CreateVisitor", "EraseVisitor", *["FindVisitors"] * 3]


async def test_search_is_never_taken_for_a_chat_id(visitors_gateway: Harness) -> None:
    h = visitors_gateway
    status, _, _ = await h.call("GET", "/v1/chats/search?q=refund%20please", credential=TOKEN)
    assert status == 200
    assert h.upstream.calls[-1][1] == v.SearchMessagesRequest(q="refund please")
    status, _, _ = await h.call(
        "GET", "/v1/chats/cht_1/messages?pageSize=5&pageToken=abc", credential=TOKEN
    )
    assert status == 200
    assert h.upstream.calls[-1][1] == v.ListMessagesRequest(
        chat_id="cht_1", page_size=5, page_token="abc"
    )
    # "search" as a chat id where a template has one is a chat id (the chat is not found).
    status, _, _ = await h.call("GET", "/v1/chats/search/messages", credential=TOKEN)
    assert status == 200
    assert h.upstream.calls[-1][1] == v.ListMessagesRequest(chat_id="search")
    status, _, _ = await h.call("GET", "/v1/chats/cht_1", credential=TOKEN)
    assert status == 200
    assert h.upstream.calls[-1][1] == v.GetChatRequest(id="cht_1")
    status, headers, body = await h.call("DELETE", "/v1/chats/search", credential=TOKEN)
    assert (status, body["code"], headers["Allow"]) == (405, "method_not_allowed", "GET")


@pytest.mark.parametrize(
    ("code", "error_code", "status"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "invalid_email", 400),
        (grpc.StatusCode.NOT_FOUND, "visitor_not_found", 404),
        (grpc.StatusCode.FAILED_PRECONDITION, "visitor_erased", 400),
        (grpc.StatusCode.UNAVAILABLE, "unavailable", 503),
    ],
)
async def test_backend_codes_become_problems(
    visitors_gateway: Harness, code: grpc.StatusCode, error_code: str, status: int
) -> None:
    h = visitors_gateway
    h.upstream.answers[_VISITORS + "CreateVisitor"] = _raise(code, error_code)
    answer_status, headers, body = await h.call(
        "POST", "/v1/visitors", credential=TOKEN, json={"email": "x"}
    )
    assert (answer_status, body["code"]) == (status, error_code)
    assert headers["Content-Type"] == "application/problem+json"


async def test_publishable_keys_from_their_origins_only(visitors_gateway: Harness) -> None:
    h = visitors_gateway
    h.upstream.answers[_VISITORS + "CreateVisitor"] = _visitor
    widget = h.keys.add("publishable", ["visitors:write", "chats:write"], origins=(SHOP,))
    status, headers, body = await h.call(
        "POST", "/v1/visitors", credential=widget, origin=SHOP, json={"name": "Ada"}
    )
    assert status == 201, body
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert headers["Vary"] == "Origin"
    assert "X-Request-Id" in headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in headers
    caller = h.last_caller()  # forwarded as the key, which speaks for the visitor
    assert (caller.principal, caller.key_type, caller.key_mode) == (
        "apikey:key_0",
        "publishable",
        "live",
    )
    status, _, body = await h.call(
        "POST", "/v1/chats/cht_1/messages", credential=widget, origin=SHOP, json={"body": "hi"}
    )
    assert status == 201, body
    calls = len(h.upstream.calls)
    for origin in ("https://evil.example.com", SHOP + ".evil.com", "http://shop.example.com", None):
        status, headers, body = await h.call(
            "POST", "/v1/visitors", credential=widget, origin=origin, json={"name": "Ada"}
        )
        assert (status, body["code"]) == (403, "origin_not_allowed"), origin
        assert "Access-Control-Allow-Origin" not in headers
    # Routes without publishable_keys refuse the key whatever its scopes, before any lookup:
    # erasure (it holds visitors:write) and the reads (secret keys and people only).
    for method, path in (
        ("DELETE", "/v1/visitors/vis_1"),
        ("GET", "/v1/visitors/vis_1"),
        ("GET", "/v1/visitors?email=a%40example.com"),
        ("GET", "/v1/chats/cht_1/messages"),
        ("GET", "/v1/chats/search?q=x"),
        ("GET", "/v1/chats/cht_1"),
        ("GET", "/v1/visitors/vis_1/chats"),
    ):
        status, headers, body = await h.call(method, path, credential=widget, origin=SHOP)
        assert (status, body["code"]) == (403, "secret_key_required"), path
        assert "Access-Control-Allow-Origin" not in headers
    assert len(h.upstream.calls) == calls  # none of them reached the service


async def test_scopes_are_checked_as_for_every_key(visitors_gateway: Harness) -> None:
    h = visitors_gateway
    h.upstream.answers[_VISITORS + "CreateVisitor"] = _visitor
    chats_only = h.keys.add("publishable", ["chats:write"], origins=(SHOP,))
    status, headers, body = await h.call(
        "POST", "/v1/visitors", credential=chats_only, origin=SHOP, json={"name": "Ada"}
    )
    assert (status, body["code"]) == (403, "insufficient_scope")
    assert headers["Access-Control-Allow-Origin"] == SHOP  # the page may read why
    secret = h.keys.add("secret", ["visitors:write"])
    status, _, body = await h.call("GET", "/v1/visitors/vis_1", credential=secret)
    assert (status, body["code"]) == (403, "insufficient_scope")
    status, _, _ = await h.call("DELETE", "/v1/visitors/vis_1", credential=secret)
    assert status == 204
    assert h.last_caller().key_type == "secret"
    # A secret key from a browser is served (it is a valid key) but no page may read it.
    status, headers, _ = await h.call(
        "POST", "/v1/visitors", credential=secret, origin=SHOP, json={"name": "Ada"}
    )
    assert status == 201
    assert "Access-Control-Allow-Origin" not in headers
    assert h.upstream.methods() == ["EraseVisitor", "CreateVisitor"]


async def test_refusals_on_publishable_routes_carry_cors_for_the_keys_origin(
    visitors_gateway: Harness,
) -> None:
    h = visitors_gateway
    h.upstream.answers[_VISITORS + "CreateVisitor"] = _raise(
        grpc.StatusCode.INVALID_ARGUMENT, "invalid_email"
    )
    widget = h.keys.add("publishable", ["visitors:write"], origins=(SHOP,), burst=1)
    status, headers, body = await h.call(
        "POST", "/v1/visitors", credential=widget, origin=SHOP, json={"email": "nope"}
    )
    assert (status, body["code"]) == (400, "invalid_email")
    assert headers["Access-Control-Allow-Origin"] == SHOP
    status, headers, body = await h.call(
        "POST", "/v1/visitors", credential=widget, origin=SHOP, json={"email": "nope"}
    )
    assert (status, body["code"]) == (429, "rate_limited")
    assert headers["Access-Control-Allow-Origin"] == SHOP
    assert "Retry-After" in headers["Access-Control-Expose-Headers"]
    # An unknown key proves no origin: its refusal is not readable cross-origin.
    forged = generate("publishable", "live")
    status, headers, body = await h.call(
        "POST", "/v1/visitors", credential=forged, origin=SHOP, json={}
    )
    assert (status, body["code"]) == (401, "invalid_api_key")
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.parametrize(
    ("path", "methods"),
    [("/v1/visitors", "POST"), ("/v1/chats", "POST"), ("/v1/chats/cht_1/messages", "POST")],
)
@pytest.mark.parametrize("origin", [SHOP, "http://localhost:3000", "https://[::1]:8443"])
async def test_preflights_on_publishable_routes_answer_any_well_formed_origin(
    visitors_gateway: Harness, path: str, methods: str, origin: str
) -> None:
    status, headers = await visitors_gateway.preflight(path, origin)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == origin
    assert headers["Access-Control-Allow-Methods"] == methods
    assert headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type, X-Request-Id"
    assert headers["Access-Control-Max-Age"] == "7200"
    assert "Origin" in headers["Vary"].split(", ")
    assert "Access-Control-Allow-Credentials" not in headers
    assert visitors_gateway.upstream.calls == []


@pytest.mark.parametrize(
    ("path", "method", "origin"),
    [
        ("/v1/visitors", "GET", SHOP),  # the lookup: not for publishable keys
        ("/v1/visitors/vis_1", "GET", SHOP),
        ("/v1/visitors/vis_1", "DELETE", SHOP),
        ("/v1/chats/cht_1/messages", "GET", SHOP),
        ("/v1/chats/search", "GET", SHOP),
        ("/v1/chats/cht_1", "GET", SHOP),
        ("/v1/visitors/vis_1/chats", "GET", SHOP),
        ("/v1/api-keys", "POST", SHOP),
        ("/v1/api-keys", "GET", "https://random.example.org"),
        ("/v1/nothing-here", "POST", SHOP),
        ("/v1/visitors", "PUT", SHOP),
        ("/v1/visitors", None, SHOP),  # no Access-Control-Request-Method: not a preflight
        ("/v1/visitors", "POST", None),
        ("/v1/visitors", "POST", "null"),  # sandboxed frames and file: pages
        ("/v1/visitors", "POST", "https://shop.example.com/"),
        ("/v1/visitors", "POST", "https://shop.example.com:443"),
        ("/v1/visitors", "POST", "HTTPS://SHOP.EXAMPLE.COM"),
        ("/v1/visitors", "POST", "https://user@shop.example.com"),
        ("/v1/visitors", "POST", "ftp://shop.example.com"),
        ("/v1/visitors", "POST", "https://" + "a" * 300 + ".com"),
    ],
)
async def test_every_other_preflight_is_refused(
    visitors_gateway: Harness, path: str, method: str | None, origin: str | None
) -> None:
    status, headers = await visitors_gateway.preflight(path, origin, method)
    assert status == 403
    assert "Access-Control-Allow-Origin" not in headers
    assert "Access-Control-Allow-Methods" not in headers


async def test_configured_cors_origins_keep_their_rule(visitors_gateway: Harness) -> None:
    """PALISADE_GATEWAY_CORS_ORIGINS (the dashboard) works as before, on every route."""
    h = visitors_gateway
    status, headers = await h.preflight("/v1/api-keys", DASHBOARD, "GET")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == DASHBOARD
    assert headers["Access-Control-Allow-Methods"] == "GET, POST, PATCH, DELETE"
    status, headers, _ = await h.call(
        "DELETE", "/v1/visitors/vis_1", credential=TOKEN, origin=DASHBOARD
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == DASHBOARD
    status, headers, _ = await h.call("DELETE", "/v1/visitors/vis_1", credential=TOKEN, origin=SHOP)
    assert status == 204
    assert "Access-Control-Allow-Origin" not in headers  # a person's answer: no page's
