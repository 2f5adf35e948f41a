"""Composition root: builds the gateway from settings and serves HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from palisade.common.caller import AssertionSigner
from palisade.common.clock import Clock, SystemClock
from palisade.common.edge_keys import open_service_keys
from palisade.common.edges import EDGES, Edge
from palisade.common.grpc_client import insecure_channel
from palisade.common.metrics import start_metrics_endpoint
from palisade.common.tasks import running_in_background
from palisade.gateway.app import Gateway, Upstreams
from palisade.gateway.client_ip import parse_networks
from palisade.gateway.config import SERVICE_NAME, GatewaySettings
from palisade.gateway.edge_auth import EdgeAuthenticator
from palisade.gateway.http_server import make_runner
from palisade.gateway.key_auth import KeyAuthenticator, KeyCache, UsageRecorder
from palisade.gateway.limits import RateLimitPolicy
from palisade.gateway.metrics import GatewayMetrics
from palisade.gateway.rate_limit import Limit, LocalRateLimiter, RateLimiter, RedisRateLimiter
from palisade.gateway.rate_limit.resp_client import RespClient
from palisade.gateway.routes import build_routes, service_descriptor
from palisade.gateway.token_cache import TokenCache
from palisade_api.apikeys.v1 import apikeys_pb2, apikeys_pb2_grpc
from palisade_api.audit.v1 import audit_pb2
from palisade_api.auth.v1 import auth_pb2, auth_pb2_grpc
from palisade_api.visitors.v1 import visitors_pb2
from palisade_api.webhooks.v1 import webhooks_pb2

log = logging.getLogger("palisade.gateway.server")


@dataclass
class GatewayServer:
    http_port: int
    metrics_port: int
    cache: TokenCache
    edge: EdgeAuthenticator
    registry: CollectorRegistry
    key_cache: KeyCache
    keys: KeyAuthenticator
    usage: UsageRecorder

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


# The auth service's other public services (one proto file per domain).
_AUTH_SERVICES = (
    ("palisade_api.auth.v1.account_pb2", "AccountService"),
    ("palisade_api.auth.v1.password_reset_pb2", "PasswordResetService"),
    ("palisade_api.auth.v1.team_pb2", "TeamService"),
)


@asynccontextmanager
async def serve_gateway(
    settings: GatewaySettings, *, clock: Clock | None = None, edges: Sequence[Edge] = EDGES
) -> AsyncIterator[GatewayServer]:
    clock = clock or SystemClock()
    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp(), edges=edges)
    async with AsyncExitStack() as stack:
        auth_channel = insecure_channel(settings.auth_target)
        stack.push_async_callback(auth_channel.close, None)
        apikeys_channel = insecure_channel(settings.apikeys_target)
        stack.push_async_callback(apikeys_channel.close, None)
        audit_channel = insecure_channel(settings.audit_target)
        stack.push_async_callback(audit_channel.close, None)
        visitors_channel = insecure_channel(settings.visitors_target)
        stack.push_async_callback(visitors_channel.close, None)
        webhooks_channel = insecure_channel(settings.webhooks_target)
        stack.push_async_callback(webhooks_channel.close, None)
        signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=settings.assertion_ttl_seconds)
        built_in = ("auth", "apikeys", "audit", "visitors", "webhooks")
        for audience in (*built_in, *settings.extra_upstreams):
            signer.require_edge(audience)  # an upstream without an edge key: fail at start
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry)
        cache = TokenCache(
            max_entries=settings.token_cache_entries,
            max_age_seconds=settings.token_cache_seconds,
            clock=clock,
        )
        edge = EdgeAuthenticator(
            stub=auth_pb2_grpc.AuthServiceStub(auth_channel),
            signer=signer,
            cache=cache,
            timeout=settings.upstream_timeout_seconds,
            on_lookup=metrics.token_cache_lookup,
            clock=clock,
            heartbeat_deadline_seconds=settings.revocation_heartbeat_deadline_seconds,
        )
        key_cache = KeyCache(
            max_entries=settings.key_cache_entries,
            max_age_seconds=settings.key_cache_seconds,
            clock=clock,
        )
        apikeys_stub = apikeys_pb2_grpc.ApiKeysServiceStub(apikeys_channel)
        usage = UsageRecorder(
            stub=apikeys_stub,
            signer=signer,
            clock=clock,
            timeout=settings.upstream_timeout_seconds,
        )
        key_auth = KeyAuthenticator(
            stub=apikeys_stub,
            signer=signer,
            cache=key_cache,
            usage=usage,
            timeout=settings.upstream_timeout_seconds,
            clock=clock,
            heartbeat_deadline_seconds=settings.revocation_heartbeat_deadline_seconds,
            on_lookup=metrics.key_cache_lookup,
        )
        limiter: RateLimiter
        if settings.redis_url:
            redis = RespClient.from_url(settings.redis_url, connect_timeout=1.0, reply_timeout=1.0)
            stack.push_async_callback(redis.aclose)
            limiter = RedisRateLimiter(redis, clock=clock)
        else:
            limiter = LocalRateLimiter(clock=clock)
        limits = RateLimitPolicy(
            limiter=limiter,
            user_limit=Limit(settings.user_rate_limit_per_minute, settings.user_rate_limit_burst),
            client_lookup_limit=Limit(
                settings.client_lookup_limit_per_minute, settings.client_lookup_limit_burst
            ),
            fail_open=settings.rate_limit_fail_open,
            fail_open_publishable=settings.rate_limit_fail_open_publishable,
        )
        key_auth.limit_lookups(limits)
        services = [
            (auth_pb2.DESCRIPTOR.services_by_name["AuthService"], "auth"),
            *((service_descriptor(module, name), "auth") for module, name in _AUTH_SERVICES),
            (apikeys_pb2.DESCRIPTOR.services_by_name["ApiKeysService"], "apikeys"),
            (audit_pb2.DESCRIPTOR.services_by_name["AuditService"], "audit"),
            *(
                (visitors_pb2.DESCRIPTOR.services_by_name[name], "visitors")
                for name in ("VisitorsService", "ChatsService")
            ),
            (webhooks_pb2.DESCRIPTOR.services_by_name["WebhooksService"], "webhooks"),
        ]
        channels = {
            "auth": auth_channel,
            "apikeys": apikeys_channel,
            "audit": audit_channel,
            "visitors": visitors_channel,
            "webhooks": webhooks_channel,
        }
        for audience, upstream in settings.extra_upstreams.items():
            services.append((service_descriptor(upstream.proto_module, upstream.service), audience))
            channels[audience] = insecure_channel(upstream.target)
            stack.push_async_callback(channels[audience].close, None)
        gateway = Gateway(
            routes=build_routes(services),
            upstreams=Upstreams(channels),
            signer=signer,
            edge=edge,
            metrics=metrics,
            trusted_proxies=parse_networks(settings.trusted_proxies),
            timeout=settings.upstream_timeout_seconds,
            max_body_bytes=settings.max_body_bytes,
            cors_origins=settings.cors_origins,
            rate_limits=limits,
            api_keys=key_auth,
        )
        await stack.enter_async_context(
            running_in_background(edge.follow_revocations(), name="palisade-revocation-follower")
        )
        await stack.enter_async_context(
            running_in_background(key_auth.follow_revocations(), name="palisade-key-follower")
        )
        await stack.enter_async_context(
            running_in_background(usage.run(), name="palisade-key-usage")
        )
        runner = make_runner(
            gateway.application(), shutdown_seconds=settings.shutdown_grace_seconds
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        # Port 0 picks a free port; aiohttp only tells it through the listening sockets.
        sockets = getattr(site._server, "sockets", None) or []
        port = int(sockets[0].getsockname()[1]) if sockets else settings.http_port
        endpoint = start_metrics_endpoint(settings.metrics_host, settings.metrics_port, registry)
        stack.callback(endpoint.stop)
        log.info("serving", extra={"http_port": port, "metrics_port": endpoint.port})
        yield GatewayServer(port, endpoint.port, cache, edge, registry, key_cache, key_auth, usage)
