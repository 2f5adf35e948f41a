"""The HTTP application: one dispatcher for every annotated route, plus the gateway's own
routes (health, /openapi.json, /v1/whoami and the confirm pages behind emailed links)."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from palisade.common.caller import AssertionSigner
from palisade.common.event_catalogue import PUBLISHED_EVENT_TYPES
from palisade.common.logs import request_id_var, safe_request_id
from palisade.gateway import link_pages, whoami
from palisade.gateway.access import (
    ApiKeyVerifier,
    Forbidden,
    KeyGrant,
    check_key,
    check_key_allowed,
    check_person,
    is_api_key,
)
from palisade.gateway.client_ip import Network, client_ip
from palisade.gateway.cors import EXPOSE_HEADERS, BrowserRoutes
from palisade.gateway.edge_auth import AuthenticationFailed, EdgeAuthenticator, bearer_token
from palisade.gateway.http_server import expect_handler
from palisade.gateway.limits import (
    LimiterDown,
    RateLimited,
    RateLimitPolicy,
    key_subjects,
    person_subjects,
)
from palisade.gateway.metrics import GatewayMetrics
from palisade.gateway.openapi import openapi_document
from palisade.gateway.problems import from_rpc_error, problem
from palisade.gateway.rate_limit import Decision, Limit, Subject, rate_limit_headers
from palisade.gateway.routes import (
    MethodNotAllowed,
    Route,
    RouteNotFound,
    Router,
    matching_order,
)
from palisade.gateway.token_cache import Grant
from palisade.gateway.transcode import BadRequest, build_request, render
from palisade_api.common.v1 import access_pb2

log = logging.getLogger("palisade.gateway")
# Distinct (peer, X-Forwarded-For) pairs whose client IP is kept (see GatewayApp._client_ips).
_CLIENT_IPS_KEPT = 4096
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ROUTE_TEMPLATE = web.RequestKey("route_template", str)
RATE_LIMIT = web.RequestKey("rate_limit", Decision)
# The Origin a publishable key was verified for, on a route that admits such keys: the answer
# (success or refusal) carries Access-Control-Allow-Origin for it (see palisade.gateway.cors).
KEY_ORIGIN = web.RequestKey("key_origin", str)
# Public routes where anyone can make the backend look something up (a key found in public,
# an emailed token guessed at): limited per client network, as key lookups that miss the
# cache are.
_LOOKUP_ROUTES = frozenset(
    {
        "/palisade.apikeys.v1.ApiKeysService/ReportLeak",
        "/palisade.auth.v1.AccountService/ConfirmEmailVerification",
        "/palisade.auth.v1.AccountService/ConfirmNotMe",
        "/palisade.auth.v1.AuthService/RedeemMagicLink",
    }
)


@dataclass
class Upstreams:
    """A channel per backend service, by the audience name routes carry."""

    channels: dict[str, grpc.aio.Channel]


class Gateway:
    def __init__(
        self,
        *,
        routes: list[Route],
        upstreams: Upstreams,
        signer: AssertionSigner,
        edge: EdgeAuthenticator,
        metrics: GatewayMetrics,
        trusted_proxies: list[Network],
        timeout: float,
        max_body_bytes: int,
        cors_origins: list[str],
        rate_limits: RateLimitPolicy,
        api_keys: ApiKeyVerifier | None = None,
    ) -> None:
        self._api_keys = api_keys
        self._limits = rate_limits
        self._router = Router(matching_order(routes))
        self._browser = BrowserRoutes(routes, self._router)
        self._upstreams = upstreams
        self._signer = signer
        self._edge = edge
        self._metrics = metrics
        self._trusted = trusted_proxies
        # client_ip() answers by (peer, X-Forwarded-For) alone, and a client sends the same
        # pair on every request of a connection: parsed once, then looked up. Emptied when full
        # (a flood of distinct pairs costs a parse each, as without the memo).
        self._client_ips: dict[tuple[str, str | None], str] = {}
        self._timeout = timeout
        self._max_body = max_body_bytes
        self._cors = frozenset(cors_origins)
        # The generated routes and, in this one place, the routes the gateway answers itself.
        # The webhooks section only when the webhooks service is behind this gateway.
        webhook_types = (
            PUBLISHED_EVENT_TYPES if any(r.audience == "webhooks" for r in routes) else None
        )
        self._openapi_body = json.dumps(
            openapi_document(routes, [whoami.OPERATION], webhook_types)
        ).encode()
        self._calls = {
            route.full_method: upstreams.channels[route.audience].unary_unary(
                route.full_method,
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=GetMessageClass(route.method.output_type).FromString,
            )
            for route in routes
        }

    def application(self) -> web.Application:
        # Every route is a catch-all or a plain path, so every request reaches a handler: the
        # frame wraps each handler rather than being an aiohttp middleware, which would add
        # two layers per request (ours and aiohttp's own current-app one) for nothing.
        app = web.Application(client_max_size=self._max_body)
        for path, handler in (
            ("/healthz", self._healthz),
            ("/readyz", self._readyz),
            ("/openapi.json", self._openapi),
            (whoami.PATH, self._whoami),
            *((page.path, _link_page(page)) for page in link_pages.PAGES),
        ):
            framed = self._framed(self._local_get(path, handler))
            app.router.add_route("*", path, framed, expect_handler=expect_handler)
        # [\s\S], not ".": a path may hold an encoded newline, and a path no route takes
        # would get aiohttp's own text/plain 404 (no frame runs outside a handler).
        catch_all = self._framed(self._dispatch)
        app.router.add_route("*", r"/{tail:[\s\S]*}", catch_all, expect_handler=expect_handler)
        # A safety net for answers aiohttp makes before any handler (e.g. a refused Expect).
        app.on_response_prepare.append(_hide_server_banner)
        return app

    def _local_get(self, path: str, handler: Handler) -> Handler:
        """A gateway-local GET route, refusing other methods as the proto routes do."""

        async def answer(request: web.Request) -> web.StreamResponse:
            request[ROUTE_TEMPLATE] = path
            if request.method in ("GET", "HEAD"):  # aiohttp sends no body for HEAD
                return await handler(request)
            if request.method == "OPTIONS":
                return self._preflight(request)
            return problem(405, headers={"Allow": "GET, HEAD"})

        return answer

    # -- every request ------------------------------------------------------------------------

    def _framed(self, handler: Handler) -> Handler:
        """handler, with what every answer gets: a request id, the common headers, metrics,
        and problem+json for every refusal. (A wrapper per handler rather than an aiohttp
        middleware: every route ends in a handler, and the middleware machinery would add
        two layers to each request for nothing; this is the hot path of P2.)"""

        async def framed(request: web.Request) -> web.StreamResponse:
            sent = request.headers.get("X-Request-Id")
            # os.urandom rather than the uuid4 safe_request_id makes: as random, a fifth of
            # the cost.
            request_id = safe_request_id(sent) if sent is not None else os.urandom(16).hex()
            token = request_id_var.set(request_id)
            start = time.perf_counter()
            try:
                response = await handler(request)
            except Exception as exc:
                response = self._refusal(exc)
            finally:
                request_id_var.reset(token)
            response.headers["X-Request-Id"] = request_id
            limited = request.get(RATE_LIMIT)
            if limited is not None:
                response.headers.update(rate_limit_headers(limited))
            response.headers["Cache-Control"] = "no-store"  # every answer is someone's own
            response.headers["X-Content-Type-Options"] = "nosniff"
            response.headers["Referrer-Policy"] = "no-referrer"
            self._cors_headers(request, response)
            route = request.get(ROUTE_TEMPLATE, "unmatched")
            elapsed = time.perf_counter() - start
            self._metrics.request(route, request.method, response.status, elapsed)
            return response

        return framed

    def _refusal(self, exc: Exception) -> web.StreamResponse:
        """The problem+json answer for an exception a handler raised."""
        if isinstance(exc, web.HTTPException):  # aiohttp's own, e.g. 413 on a large body
            return problem(exc.status, detail=exc.reason)
        if isinstance(exc, BadRequest):
            return problem(exc.status, code=exc.code, detail=exc.detail)
        if isinstance(exc, Forbidden):
            return problem(403, code=exc.code, detail=exc.detail)
        if isinstance(exc, AuthenticationFailed):
            return problem(
                401, code=exc.code, detail=exc.detail, headers={"WWW-Authenticate": "Bearer"}
            )
        if isinstance(exc, RateLimited):
            return problem(
                429,
                code="rate_limited",
                detail="too many requests; retry after the time in Retry-After",
                headers=rate_limit_headers(exc.decision),
            )
        if isinstance(exc, LimiterDown):
            return problem(503, code="unavailable", detail="rate limiting is unavailable")
        if isinstance(exc, grpc.aio.AioRpcError):
            return from_rpc_error(exc)
        if isinstance(exc, ConnectionError):  # the client went away: nobody to answer
            log.info("client disconnected during the request")
            return problem(400, detail="connection closed by the client")
        log.error("unhandled error in the gateway", exc_info=exc)
        return problem(500)

    def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if not origin:  # most requests (and KEY_ORIGIN is only ever set from this header)
            return
        # A publishable key's page, checked against the key; else the operator's list.
        if request.get(KEY_ORIGIN) is None and origin not in self._cors:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS

    # -- the API ------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return self._preflight(request)
        try:
            route, params = self._router.match(request.method, request.path)
        except RouteNotFound:
            return problem(404, detail="no such route")
        except MethodNotAllowed as exc:
            return problem(405, headers={"Allow": ", ".join(exc.allowed)})
        request[ROUTE_TEMPLATE] = route.template
        ip = self._client_ip(request)
        grant: Grant | None = None
        key: KeyGrant | None = None
        if route.access.access == access_pb2.ACCESS_USER:  # who asks, before what they send
            grant, key = await self._authenticate(
                request, route.access, ip, browser=route.access.publishable_keys
            )
        elif route.access.bearer_optional and "Authorization" in request.headers:
            # A public route that answers a signed-in person differently: a bearer sent is
            # checked like any other (API keys refused: such rules never admit them).
            grant, key = await self._authenticate(request, route.access, ip)
        elif route.full_method in _LOOKUP_ROUTES:
            await self._limits.spend_client_lookup(ip)
        raw = await request.read()
        message = build_request(
            route, params, list(request.query.items()), raw, request.content_type
        )
        metadata = self._caller_metadata(request, route, ip, grant, key)
        response = await self._calls[route.full_method](
            message, metadata=metadata, timeout=self._timeout
        )
        if grant is not None and route.http_method != "GET":
            if route.audience == "auth":
                # Logout, revocations, password changes: this replica must refuse the affected
                # tokens on the very next request, before the feed's notice arrives. Only auth
                # ends sessions; a write elsewhere keeps the caller's cached token.
                self._edge.forget_user(grant.user_id)
            elif route.audience == "apikeys" and self._api_keys is not None:
                # Likewise for keys revoked or rotated through this replica.
                self._api_keys.forget_workspace(grant.workspace_id)
        status, body = render(route, response)
        if body is None:
            return web.Response(status=status)
        return web.Response(status=status, body=body, content_type="application/json")

    async def _authenticate(
        self,
        request: web.Request,
        rule: access_pb2.AccessRule,
        ip: str,
        *,
        browser: bool = False,
    ) -> tuple[Grant | None, KeyGrant | None]:
        """The verified caller (a person or a key), its rate limit spent, its access checked.

        Limits are spent only once the credential verified, so a forged or unknown key never
        spends anyone's budget; and before the role or scope check, so refused calls count.
        browser: the route answers CORS for publishable keys (its answer, from here on, carries
        Access-Control-Allow-Origin for the origin such a key was verified for).
        """
        credential = bearer_token(request.headers.get("Authorization"))
        if is_api_key(credential):
            # People-only routes refuse keys unverified, secret-key routes publishable ones.
            check_key_allowed(rule, credential)
            key = await self._verify_key(credential, request, ip)
            if browser and key.publishable:
                # verify() refused every other origin (and a missing one): this one is the key's.
                request[KEY_ORIGIN] = request.headers["Origin"]
            await self._spend(
                request,
                key_subjects(
                    key.key_id,
                    Limit(key.requests_per_minute, key.burst),
                    key.created_by,
                    key.publishable,
                    self._limits.user_limit,
                ),
                fail_open=(
                    self._limits.fail_open_publishable
                    if key.publishable
                    else self._limits.fail_open
                ),
            )
            check_key(rule, key)
            return None, key
        grant = await self._edge.grant_for(credential)
        await self._spend(
            request,
            person_subjects(grant.user_id, self._limits.user_limit),
            fail_open=self._limits.fail_open,
        )
        check_person(rule, grant)
        return grant, None

    async def _spend(
        self, request: web.Request, subjects: tuple[Subject, ...], *, fail_open: bool
    ) -> None:
        """Spends one request of every subject's limit (or none), noting the headers' state;
        raises RateLimited, or LimiterDown when the counters are unreachable and the policy
        for this kind of caller is to fail closed."""
        decision = await self._limits.spend(subjects, fail_open=fail_open)
        if decision is not None:
            request[RATE_LIMIT] = decision

    async def _whoami(self, request: web.Request) -> web.StreamResponse:
        """The caller's grant, from the token or key cache: no backend call on a hit."""
        grant, key = await self._authenticate(request, whoami.ACCESS, self._client_ip(request))
        if request.query_string or request.body_exists:  # who asks, before what they send
            raise BadRequest(400, "invalid_request", "this route takes no query or body")
        if key is not None:
            body = whoami.key_body(key)
        else:
            assert grant is not None  # _authenticate returns a person or a key
            body = whoami.whoami_body(grant)
        return web.Response(body=body, content_type="application/json")

    async def _verify_key(self, credential: str, request: web.Request, ip: str) -> KeyGrant:
        if self._api_keys is None:
            raise AuthenticationFailed("invalid_api_key", "API keys are not accepted here")
        return await self._api_keys.verify(
            credential, origin=request.headers.get("Origin"), client_ip=ip
        )

    def _client_ip(self, request: web.Request) -> str:
        peer = request.remote or ""
        # Every X-Forwarded-For line: some proxies add a line instead of appending to one.
        forwarded = ", ".join(request.headers.getall("X-Forwarded-For", ())) or None
        pair = (peer, forwarded)
        found = self._client_ips.get(pair)
        if found is None:
            if len(self._client_ips) >= _CLIENT_IPS_KEPT:
                self._client_ips.clear()
            found = self._client_ips[pair] = client_ip(peer, forwarded, self._trusted)
        return found

    def _caller_metadata(
        self,
        request: web.Request,
        route: Route,
        ip: str,
        grant: Grant | None,
        key: KeyGrant | None,
    ) -> Any:
        agent = request.headers.get("User-Agent")
        request_id = request_id_var.get() or uuid.uuid4().hex
        if grant is not None:
            assertion = self._signer.sign(
                audience=route.audience,
                method=route.full_method,
                principal=f"user:{grant.user_id}",
                request_id=request_id,
                workspace_id=grant.workspace_id,
                session_id=grant.session_id,
                client_ip=ip,
                user_agent=agent,
                role=grant.role,
                authenticated_at=int(grant.authenticated_at) or None,
            )
        elif key is not None:
            assertion = self._signer.sign(
                audience=route.audience,
                method=route.full_method,
                principal=f"apikey:{key.key_id}",
                request_id=request_id,
                workspace_id=key.workspace_id,
                scopes=sorted(key.scopes),
                client_ip=ip,
                user_agent=agent,
                key_mode=key.mode,
                acting_user_id=key.created_by,
                key_type="publishable" if key.publishable else "secret",
            )
        else:
            assertion = self._signer.sign(
                audience=route.audience,
                method=route.full_method,
                principal="anonymous",
                request_id=request_id,
                client_ip=ip,
                user_agent=agent,
            )
        return (("x-palisade-caller", assertion), ("x-request-id", request_id))

    def _preflight(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not origin:
            return problem(403, code="cors_forbidden", detail="origin not allowed")
        if origin not in self._cors:
            # Publishable-key routes answer any well-formed origin (palisade.gateway.cors says
            # why); everything else stays closed.
            answer = self._browser.preflight(
                request.path, origin, request.headers.get("Access-Control-Request-Method")
            )
            if answer is None:
                return problem(403, code="cors_forbidden", detail="origin not allowed")
            request[ROUTE_TEMPLATE], headers = answer
            return web.Response(status=204, headers=headers)
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST, PATCH, DELETE",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Request-Id",
                "Access-Control-Max-Age": "600",
            },
        )

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._openapi_body, content_type="application/json")

    # -- health -------------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        unavailable = []
        for name, channel in sorted(self._upstreams.channels.items()):
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status != health_pb2.HealthCheckResponse.SERVING:
                    unavailable.append(name)
            except grpc.aio.AioRpcError:
                unavailable.append(name)
        if unavailable:
            body = {"status": "unavailable", "unavailable": unavailable}
            return web.Response(
                status=503, body=json.dumps(body).encode(), content_type="application/json"
            )
        return web.json_response({"status": "ready"})


def _link_page(page: link_pages.LinkPage) -> Handler:
    """The handler of a page behind an emailed link."""

    async def serve(request: web.Request) -> web.StreamResponse:
        # The query (the link's token) is the page script's business: nothing here reads it,
        # and no backend is called, so a link scanner's GET consumes nothing.
        return page.response()

    return serve


async def _hide_server_banner(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "palisade"
