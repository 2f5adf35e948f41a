"""Authentication at the edge: bearer access tokens validated by auth, cached, revoked live.

The cache is trusted only while the revocation stream is connected: when it drops, the cache
is emptied and nothing new is cached until it is back, so a revocation can never be missed
for longer than the reconnection takes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from palisade.common.caller import AssertionSigner
from palisade.gateway.problems import trailers_of
from palisade.gateway.token_cache import Grant, TokenCache
from palisade_api.auth.v1 import auth_pb2

log = logging.getLogger("palisade.gateway.auth")
_BEARER = re.compile(r"(?i:bearer) +([A-Za-z0-9_\-]{1,256})")  # the scheme is case-insensitive
_RECONNECT_SECONDS = 0.5


class AuthenticationFailed(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


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
    ) -> None:
        self._stub = stub
        self._signer = signer
        self._cache = cache
        self._timeout = timeout
        self._on_lookup = on_lookup
        self._feed_connected = False

    @property
    def feed_connected(self) -> bool:
        return self._feed_connected

    def _service_metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._signer.sign(
            audience="auth", principal="service:gateway", request_id=uuid.uuid4().hex
        )
        return (("x-palisade-caller", token),)

    async def grant_for(self, token: str) -> Grant:
        """The grant behind an access token; raises AuthenticationFailed or grpc errors."""
        token_hash = hashlib.sha256(token.encode("ascii")).digest()
        grant = self._cache.get(token_hash)
        self._on_lookup(grant is not None)
        if grant is not None:
            return grant
        generation = self._cache.generation
        try:
            reply = await self._stub.ValidateAccessToken(
                auth_pb2.ValidateAccessTokenRequest(access_token=token),
                metadata=self._service_metadata(),
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
        )
        # Cache only what a live feed can revoke, and only if no eviction (a revocation notice,
        # a feed reconnect) happened while auth was answering: that answer may be stale.
        if self._feed_connected and self._cache.generation == generation:
            self._cache.put(token_hash, grant)
        return grant

    def forget_user(self, user_id: str) -> None:
        """Drops a user's cached tokens now (after they changed their own sessions here)."""
        self._cache.evict_user(user_id)

    async def follow_revocations(self) -> None:
        """Evicts revoked tokens as auth announces them; runs until cancelled."""
        while True:
            try:
                call = self._stub.WatchRevocations(
                    auth_pb2.WatchRevocationsRequest(), metadata=self._service_metadata()
                )
                # Auth says so once it has subscribed: from then on no revocation is missed.
                # (A call that failed early also returns initial metadata, just without it.)
                metadata: Any = await call.initial_metadata()
                if ("x-palisade-subscribed", "1") not in tuple(metadata or ()):
                    raise ConnectionError("revocation feed did not confirm the subscription")
                self._feed_connected = True
                async for notice in call:
                    self._cache.evict(notice.access_token_hashes, notice.session_ids)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: forget everything, reconnect
                log.warning(
                    "revocation feed lost; cache cleared", extra={"error": type(exc).__name__}
                )
            self._feed_connected = False
            self._cache.clear()
            await asyncio.sleep(_RECONNECT_SECONDS)
