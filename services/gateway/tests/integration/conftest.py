"""The gateway's HTTP application on a real socket (port 0), with spies in place of auth.

The spies record every call, so a test can show that a route never reached a backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry

from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeySource, ServiceKeys
from palisade.common.edges import EDGES, Edge
from palisade.gateway.app import Gateway, Upstreams
from palisade.gateway.edge_auth import EdgeAuthenticator
from palisade.gateway.http_server import make_runner
from palisade.gateway.limits import RateLimitPolicy
from palisade.gateway.metrics import GatewayMetrics
from palisade.gateway.rate_limit import Limit, LocalRateLimiter
from palisade.gateway.routes import build_routes
from palisade.gateway.token_cache import TokenCache
from palisade_api.auth.v1 import auth_pb2
from palisade_api.common.v1 import access_pb2

TOKEN = "plsd_at_" + "T" * 43
OTHER_TOKEN = "plsd_at_" + "O" * 43


def rpc_error(code: grpc.StatusCode, error_code: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("palisade-error-code", error_code)),
        details=error_code.replace("_", " "),
    )


class _Feed:
    """A WatchRevocations call: confirms the subscription, then yields what the test sends."""

    def __init__(self, notices: asyncio.Queue[auth_pb2.Revocation]) -> None:
        self._notices = notices
        self.cancelled = False

    async def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-palisade-subscribed", "1"),)

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> auth_pb2.Revocation:
        message = await self._notices.get()
        if message is _END:
            raise StopAsyncIteration
        return message

    def cancel(self) -> None:
        self.cancelled = True


_END = auth_pb2.Revocation(reason="(test: the stream ends here)")


def notes_service() -> ServiceDescriptor:
    """A service other than auth (built here): `POST /v1/notes` for signed-in people."""
    from google.api import annotations_pb2

    pool, name = descriptor_pool.Default(), "gateway_tests/notes.proto"
    try:
        return pool.FindFileByName(name).services_by_name["Notes"]
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto(
        name=name,
        package="gateway_tests.v1",
        syntax="proto3",
        dependency=["google/api/annotations.proto", access_pb2.DESCRIPTOR.name],
    )
    proto.message_type.add(name="Note").field.add(name="text", number=1, type=9, label=1)
    method = proto.service.add(name="Notes").method.add(
        name="Add", input_type=".gateway_tests.v1.Note", output_type=".gateway_tests.v1.Note"
    )
    method.options.Extensions[annotations_pb2.http].post = "/v1/notes"
    method.options.Extensions[annotations_pb2.http].body = "*"
    method.options.Extensions[access_pb2.access].access = access_pb2.ACCESS_USER
    pool.Add(proto)
    return pool.FindFileByName(name).services_by_name["Notes"]


@dataclass
class SpyAuth:
    """Stands for auth's stub (as the edge authenticator uses it): valid tokens from a table."""

    clock: ManualClock
    valid: dict[str, auth_pb2.ValidateAccessTokenResponse] = field(default_factory=dict)
    validations: list[str] = field(default_factory=list)
    # The current stream's queue (a new one per WatchRevocations call, like a new stream).
    notices: asyncio.Queue[auth_pb2.Revocation] = field(default_factory=asyncio.Queue)
    feeds: list[_Feed] = field(default_factory=list)
    sequence: int = 0  # the last notice number published
    hold: asyncio.Event | None = None
    heartbeat_on_subscribe: bool = True  # as auth does within 0.5 s; off to test catching up

    def allow(
        self,
        token: str,
        *,
        user: str = "usr_1",
        session: str = "ses_1",
        restrictions: Sequence[str] = (),
    ) -> None:
        """restrictions: what an unverified account may not do (empty: a verified one)."""
        expires = Timestamp(seconds=int(self.clock.timestamp()) + 3600)
        self.valid[token] = auth_pb2.ValidateAccessTokenResponse(
            user_id=user,
            workspace_id="ws_1",
            role="owner",
            session_id=session,
            expires_at=expires,
            restrictions=list(restrictions),
        )

    async def ValidateAccessToken(self, request: Any, **_options: Any) -> Any:
        self.validations.append(request.access_token)
        reply = self.valid.get(request.access_token)
        if self.hold is not None:  # a test holds the answer (looked up already) back
            await self.hold.wait()
        if reply is None:
            raise rpc_error(grpc.StatusCode.UNAUTHENTICATED, "session_revoked")
        return reply

    def WatchRevocations(self, request: Any, **_options: Any) -> _Feed:
        self.notices = asyncio.Queue()
        if self.heartbeat_on_subscribe:
            self.heartbeat()
        feed = _Feed(self.notices)
        self.feeds.append(feed)
        return feed

    def revoke(self, *, sessions: Sequence[str] = (), hashes: Sequence[bytes] = ()) -> None:
        """Publishes the next numbered notice on the current stream."""
        self.sequence += 1
        self.notices.put_nowait(
            auth_pb2.Revocation(
                session_ids=list(sessions), access_token_hashes=list(hashes), sequence=self.sequence
            )
        )

    def heartbeat(self, sequence: int | None = None) -> None:
        self.notices.put_nowait(
            auth_pb2.Revocation(
                heartbeat=True, sequence=self.sequence if sequence is None else sequence
            )
        )

    def end_stream(self) -> None:
        self.notices.put_nowait(_END)


@dataclass
class SpyChannel:
    """Stands for the upstream channel: every forwarded call is recorded, answered empty."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    fail_with: Exception | None = None  # raised by every call, when set

    def unary_unary(self, method: str, request_serializer: Any, response_deserializer: Any) -> Any:
        async def call(message: Any, **_options: Any) -> Any:  # metadata, timeout
            self.calls.append((method, message))
            if self.fail_with is not None:
                raise self.fail_with
            return response_deserializer(b"")

        return call


@dataclass
class Harness:
    clock: ManualClock
    http: aiohttp.ClientSession
    base_url: str
    port: int
    auth: SpyAuth
    upstream: SpyChannel
    cache: TokenCache
    edge: EdgeAuthenticator

    async def call(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, bytes]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.http.request(
            method, self.base_url + path, headers=headers, **kwargs
        ) as response:
            return response.status, response.headers.copy(), await response.read()


@pytest.fixture
async def gateway() -> AsyncIterator[Harness]:
    clock = ManualClock()
    auth = SpyAuth(clock)
    upstream = SpyChannel()
    edges = (*EDGES, Edge("gateway", "notes", delegates=True))  # the test-only notes service
    keys = KeySource.fixed(ServiceKeys.generate("gateway", edges))
    signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=60)
    cache = TokenCache(max_entries=100, max_age_seconds=60, clock=clock)
    edge = EdgeAuthenticator(
        stub=auth, signer=signer, cache=cache, timeout=1, clock=clock, heartbeat_deadline_seconds=2
    )
    app = Gateway(
        routes=build_routes(
            [
                (auth_pb2.DESCRIPTOR.services_by_name["AuthService"], "auth"),
                (notes_service(), "notes"),
            ]
        ),
        upstreams=Upstreams({"auth": upstream, "notes": upstream}),  # type: ignore[dict-item]
        signer=signer,
        edge=edge,
        metrics=GatewayMetrics(CollectorRegistry()),
        trusted_proxies=[],
        timeout=1,
        max_body_bytes=16 * 1024,
        cors_origins=[],
        # On a clock of its own: these tests move (and step back) the gateway's clock to test
        # caches and feeds; the limiter has its own tests (test_rate_limit_*).
        rate_limits=RateLimitPolicy(
            limiter=LocalRateLimiter(clock=ManualClock()), user_limit=Limit(60_000, 10_000)
        ),
    )
    follower = asyncio.create_task(edge.follow_revocations())
    runner = make_runner(app.application())  # the production runner: its logging is tested
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    try:
        for _ in range(100):  # readiness: tokens are cached only while the feed is followed
            if edge.feed_connected:
                break
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as http:
            yield Harness(
                clock, http, f"http://127.0.0.1:{port}", port, auth, upstream, cache, edge
            )
    finally:
        follower.cancel()
        await runner.cleanup()
