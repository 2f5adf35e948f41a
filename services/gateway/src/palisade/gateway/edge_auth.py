"""Authentication at the edge: bearer access tokens validated by auth, cached, revoked live.

The cache is trusted only while auth's revocation feed is known to be complete (subscribed,
a heartbeat within the deadline, no notice number skipped; see palisade.gateway.feed_follower,
which empties the cache whenever that stops being so). So a missed revocation can never
outlive the heartbeat deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from palisade.common.caller import CALLER_METADATA_KEY, AssertionSigner
from palisade.common.clock import Clock
from palisade.gateway.feed_follower import FeedFollower, FeedLost
from palisade.gateway.problems import trailers_of
from palisade.gateway.token_cache import Grant, TokenCache
from palisade_api.auth.v1 import auth_pb2

_AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
_BEARER = re.compile(r"(?i:bearer) +([A-Za-z0-9_\-]{1,256})")  # the scheme is case-insensitive
__all__ = ["AuthenticationFailed", "CacheStats", "EdgeAuthenticator", "FeedLost", "bearer_token"]


class AuthenticationFailed(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def own_call_metadata(
    signer: AssertionSigner, audience: str, full_method: str
) -> tuple[tuple[str, str], ...]:
    """The gateway's assertion as itself (not for a client) for one call to a backend.

    Per call (and per reconnect): an assertion is bound to its method and used once."""
    token = signer.sign(
        audience=audience,
        method=full_method,
        principal="service:gateway",
        request_id=uuid.uuid4().hex,
    )
    return ((CALLER_METADATA_KEY, token),)


def bearer_token(header: str | None) -> str:
    if not header:
        raise AuthenticationFailed("unauthenticated", "this request needs a bearer token")
    found = _BEARER.fullmatch(header.strip())
    if found is None:
        raise AuthenticationFailed("invalid_token", "malformed Authorization header")
    return found.group(1)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class EdgeAuthenticator:
    def __init__(
        self,
        *,
        stub: Any,  # auth_pb2_grpc.AuthServiceStub on an aio channel (stubs type it as sync)
        signer: AssertionSigner,
        cache: TokenCache,
        timeout: float,
        on_lookup: Callable[[bool], None] = lambda hit: None,
        clock: Clock | None = None,
        heartbeat_deadline_seconds: float = 2.0,
    ) -> None:
        self._stub = stub
        self._signer = signer
        self._cache = cache
        self._timeout = timeout
        self._on_lookup = on_lookup
        self._clock = clock or cache.clock
        self.revocations = FeedFollower(
            name="revocation",
            open_stream=self._watch_revocations,
            on_notice=lambda notice: cache.evict(notice.access_token_hashes, notice.session_ids),
            on_reset=cache.clear,
            clock=self._clock,
            heartbeat_deadline_seconds=heartbeat_deadline_seconds,
        )
        # Validations in flight, by (token hash, cache generation when they started): requests
        # that miss the cache for the same token at once share one call to auth instead of
        # each making its own (every connection of a client shares its token, so when its
        # entry ages out they would all validate together, behind whatever auth is busy with).
        # Keyed by generation, so a request that arrives after an eviction (a revocation
        # notice) never joins a validation that began before it: it starts its own.
        self._in_flight: dict[tuple[bytes, int], asyncio.Future[Grant]] = {}

    @property
    def feed_connected(self) -> bool:
        """Whether the feed is caught up, so validations are cached."""
        return self.revocations.caught_up

    def _receive(self, message: Any) -> None:
        # Kept for bench/p1_token_cache.py, which marks the feed caught up by hand.
        self.revocations.receive(message)

    def _watch_revocations(self) -> Any:
        return self._stub.WatchRevocations(
            auth_pb2.WatchRevocationsRequest(),
            metadata=self._service_metadata("WatchRevocations"),
        )

    def _service_metadata(self, method: str) -> tuple[tuple[str, str], ...]:
        return own_call_metadata(self._signer, "auth", f"/{_AUTH_SERVICE}/{method}")

    async def grant_for(self, token: str) -> Grant:
        """The grant behind an access token; raises AuthenticationFailed or grpc errors."""
        token_hash = hashlib.sha256(token.encode("ascii")).digest()
        trusted = self.revocations.trusted()
        grant = self._cache.get(token_hash) if trusted else None
        self._on_lookup(grant is not None)
        if grant is not None:
            return grant
        generation = self._cache.generation
        if not trusted:
            # Without a live feed no notice can bump the generation, so a request arriving
            # after a revocation would join a check that began before it: every request asks
            # auth itself, as the cache does not answer either.
            return await self._validate(token, token_hash, generation)
        key = (token_hash, generation)
        shared = self._in_flight.get(key)
        if shared is None:
            # A task of its own, so that one waiter's cancellation (its client went away)
            # does not cancel the validation the others wait for.
            shared = asyncio.ensure_future(self._validate(token, token_hash, generation))
            self._in_flight[key] = shared
            shared.add_done_callback(lambda done: self._finished(key, done))
        grant = await asyncio.shield(shared)
        if self._clock.timestamp() >= grant.expires_at:
            # It expired while the shared check was in flight: a cache hit would not serve it.
            return await self._validate(token, token_hash, self._cache.generation)
        return grant

    def _finished(self, key: tuple[bytes, int], done: asyncio.Future[Grant]) -> None:
        if self._in_flight.get(key) is done:
            del self._in_flight[key]
        if not done.cancelled():
            done.exception()  # retrieved here too: every waiter may have gone

    async def _validate(self, token: str, token_hash: bytes, generation: int) -> Grant:
        try:
            reply = await self._stub.ValidateAccessToken(
                auth_pb2.ValidateAccessTokenRequest(access_token=token),
                metadata=self._service_metadata("ValidateAccessToken"),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                code = trailers_of(error).get("palisade-error-code", "invalid_token")
                raise AuthenticationFailed(code, error.details() or "invalid token") from None
            raise
        grant = Grant(
            reply.user_id,
            reply.workspace_id,
            reply.role,
            reply.session_id,
            reply.expires_at.ToSeconds(),
            # The session's login: immutable, so safe to cache with the grant.
            reply.authenticated_at.ToSeconds() if reply.HasField("authenticated_at") else 0.0,
            # Fixed for the session's life (auth ends older sessions when an address is first
            # proven), so cached with the grant like the rest.
            frozenset(reply.restrictions),
        )
        # Cache only what a live feed can revoke, and only if no eviction (a revocation notice,
        # a feed reconnect, catching up) happened while auth was answering: it may be stale.
        if self._cache.generation == generation and self.revocations.trusted():
            self._cache.put(token_hash, grant)
        return grant

    def forget_user(self, user_id: str) -> None:
        """Drops a user's cached tokens now (after they changed their own sessions here)."""
        self._cache.evict_user(user_id)

    async def follow_revocations(self) -> None:
        """Evicts revoked tokens as auth announces them; runs until cancelled."""
        await self.revocations.follow()
