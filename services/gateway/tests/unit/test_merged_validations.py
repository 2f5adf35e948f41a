"""Concurrent cache misses for one token share one validation call to auth (issue 10).

Without this, when a busy client's cache entry ages out, every one of its connections asks auth
at once, behind whatever auth is doing (a login storm): that was the p99 of cached requests.
Sharing must never weaken revocation: a request that arrives after an eviction starts its own
validation instead of joining one that began before it.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.edge_keys import KeySource, ServiceKeys
from palisade.gateway.edge_auth import AuthenticationFailed, EdgeAuthenticator
from palisade.gateway.token_cache import TokenCache
from palisade_api.auth.v1 import auth_pb2

TOKEN = "plsd_at_" + "A" * 43
OTHER = "plsd_at_" + "B" * 43


class _Unauthenticated(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(("palisade-error-code", "session_revoked")),
            details="session revoked",
        )


class GatedAuth:
    """Answers ValidateAccessToken only when released; counts calls per token."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.refuse = False
        self.lifetime = 3600

    async def ValidateAccessToken(self, request, **_options):
        self.calls.append(request.access_token)
        expires = Timestamp(seconds=int(self.clock.timestamp()) + self.lifetime)
        await self.release.wait()
        if self.refuse:
            raise _Unauthenticated()
        return auth_pb2.ValidateAccessTokenResponse(
            user_id="u1", workspace_id="ws", role="owner", session_id="s1", expires_at=expires
        )


@pytest.fixture
def parts() -> tuple[EdgeAuthenticator, GatedAuth, TokenCache]:
    clock = ManualClock()
    cache = TokenCache(max_entries=10, max_age_seconds=60, clock=clock)
    signer = AssertionSigner(
        keys=KeySource.fixed(ServiceKeys.generate("gateway")), clock=clock, ttl_seconds=60
    )
    auth = GatedAuth(clock)
    edge = EdgeAuthenticator(stub=auth, signer=signer, cache=cache, timeout=1)
    edge.revocations.receive(auth_pb2.Revocation(heartbeat=True))  # the feed has caught up
    return edge, auth, cache


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_misses_for_one_token_make_one_call(parts) -> None:
    edge, auth, cache = parts
    waiting = [asyncio.create_task(edge.grant_for(TOKEN)) for _ in range(32)]
    other = asyncio.create_task(edge.grant_for(OTHER))
    await _settle()
    assert auth.calls == [TOKEN, OTHER]  # one per token, however many wait
    auth.release.set()
    grants = await asyncio.gather(*waiting, other)
    assert {g.user_id for g in grants} == {"u1"}
    assert len(cache) == 2
    assert edge._in_flight == {}


async def test_a_request_after_an_eviction_does_not_join_an_older_validation(parts) -> None:
    edge, auth, _ = parts
    before = asyncio.create_task(edge.grant_for(TOKEN))
    await _settle()
    edge._cache.evict([], ["s1"])  # a revocation notice while auth is answering
    after = asyncio.create_task(edge.grant_for(TOKEN))
    await _settle()
    assert auth.calls == [TOKEN, TOKEN]  # the later request asked auth itself
    auth.refuse = True  # auth now knows of the revocation
    auth.release.set()
    with pytest.raises(AuthenticationFailed):
        await before  # gather would do too; both answers are auth's
    with pytest.raises(AuthenticationFailed):
        await after


async def test_a_refusal_reaches_every_waiter_and_is_not_cached(parts) -> None:
    edge, auth, cache = parts
    auth.refuse = True
    waiting = [asyncio.create_task(edge.grant_for(TOKEN)) for _ in range(5)]
    await _settle()
    auth.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, AuthenticationFailed) for r in results)
    assert {r.code for r in results} == {"session_revoked"}
    assert auth.calls == [TOKEN]
    assert len(cache) == 0
    assert edge._in_flight == {}


async def test_one_waiter_cancelled_does_not_cancel_the_others(parts) -> None:
    edge, auth, _ = parts
    leader = asyncio.create_task(edge.grant_for(TOKEN))
    await _settle()
    follower = asyncio.create_task(edge.grant_for(TOKEN))
    await _settle()
    leader.cancel()  # its client disconnected
    await _settle()
    auth.release.set()
    grant = await follower
    assert grant.session_id == "s1"
    assert auth.calls == [TOKEN]
    assert leader.cancelled()


async def test_without_a_live_feed_every_request_asks_auth_itself(parts) -> None:
    """No notice can bump the generation while the feed is down: a request that arrives
    after a revocation must not join a check that began before it (review finding)."""
    edge, auth, _ = parts
    edge.revocations.lose()  # the stream dropped: the cache stops trusting it
    waiting = [asyncio.create_task(edge.grant_for(TOKEN)) for _ in range(3)]
    await _settle()
    assert auth.calls == [TOKEN, TOKEN, TOKEN]
    auth.release.set()
    await asyncio.gather(*waiting)
    assert edge._in_flight == {}


async def test_a_shared_grant_that_expired_meanwhile_is_checked_again(parts) -> None:
    edge, auth, _ = parts
    auth.lifetime = 10
    leader = asyncio.create_task(edge.grant_for(TOKEN))
    await _settle()
    joiner = asyncio.create_task(edge.grant_for(TOKEN))
    await _settle()
    auth.clock.advance(20)  # the token expires while the shared check is in flight
    auth.release.set()
    await _settle()
    # Auth is asked again rather than an expired grant served (a cache hit would not be).
    assert auth.calls == [TOKEN, TOKEN, TOKEN]
    auth.lifetime = 3600
    assert (await leader).session_id == "s1"
    assert (await joiner).session_id == "s1"
