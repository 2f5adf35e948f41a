"""Authentication at the edge: bearer access tokens validated by auth, cached, revoked live.

The cache is trusted only while the revocation feed is known to be complete: the stream is
subscribed, a heartbeat has been heard within the deadline (about 2 s; auth beats every
0.5 s), and every notice's sequence number followed the last. A reconnect, a sequence gap, a
heartbeat naming a notice never received, or a silent stream (a half-open connection looks
alive forever otherwise) empties the cache, and nothing is cached again until the feed has
caught up (resubscribed and a heartbeat heard). So a missed revocation can never outlive the
heartbeat deadline.
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
from palisade.common.clock import Clock
from palisade.gateway.problems import trailers_of
from palisade.gateway.token_cache import Grant, TokenCache
from palisade_api.auth.v1 import auth_pb2

log = logging.getLogger("palisade.gateway.auth")
_AUTH_SERVICE = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
_BEARER = re.compile(r"(?i:bearer) +([A-Za-z0-9_\-]{1,256})")  # the scheme is case-insensitive
_RECONNECT_SECONDS = 0.5
# How often (wall time) a quiet stream is checked against the heartbeat deadline, which is
# itself measured on the injectable clock.
_WATCH_SECONDS = 0.25


class FeedLost(Exception):
    """The revocation feed can no longer be trusted to be complete."""


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
        clock: Clock | None = None,
        heartbeat_deadline_seconds: float = 2.0,
    ) -> None:
        self._stub = stub
        self._signer = signer
        self._cache = cache
        self._timeout = timeout
        self._on_lookup = on_lookup
        self._clock = clock or cache.clock
        self._deadline = heartbeat_deadline_seconds
        # Caching is allowed only while caught up (see the module docstring).
        self._caught_up = False
        self._sequence: int | None = None  # the last notice number seen on this stream
        self._heard_at = float("-inf")  # when the stream last said anything (clock seconds)
        self._lost = asyncio.Event()  # set when the cache stopped trusting the stream
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
        return self._caught_up

    def _overdue(self) -> bool:
        # The clock is the wall clock: stepped back (NTP, a resumed VM), the time since the
        # last word is negative and would stay under the deadline for as long as the step.
        # Not knowing how long the stream has been silent, trust ends as if overdue.
        silent = self._clock.timestamp() - self._heard_at
        return silent < 0 or silent > self._deadline

    def _feed_trusted(self) -> bool:
        """Whether cached answers may be used; a missed heartbeat deadline ends the trust."""
        if not self._caught_up:
            return False
        if self._overdue():
            log.warning("revocation feed silent past its deadline; cache cleared")
            self._lose()
            return False
        return True

    def _lose(self) -> None:
        self._caught_up = False
        self._sequence = None
        self._cache.clear()
        self._lost.set()

    def _receive(self, message: Any) -> None:
        """Applies one stream message; raises FeedLost when a notice may have been missed."""
        self._heard_at = self._clock.timestamp()
        if message.heartbeat:
            if self._sequence is None:  # the first heartbeat since subscribing: caught up
                self._sequence = message.sequence
                # Bumps the generation: a validation that started before now (when notices
                # could still be missed) must not cache its answer.
                self._cache.clear()
                self._caught_up = True
            elif message.sequence != self._sequence:
                # Ahead: a notice never arrived. Behind: the sequence restarted (Redis lost it).
                raise FeedLost("heartbeat does not match the notices received")
            return
        self._cache.evict(message.access_token_hashes, message.session_ids)
        if self._sequence is None:
            return  # not caught up yet: the first heartbeat sets the position
        if message.sequence > self._sequence + 1:
            raise FeedLost("sequence gap")
        # One behind or less is a repeat (delivery is at-least-once): evicted again, harmless.
        self._sequence = max(self._sequence, message.sequence)

    def _service_metadata(self, method: str) -> tuple[tuple[str, str], ...]:
        # Per call (and per reconnect): an assertion is bound to its method and used once.
        token = self._signer.sign(
            audience="auth",
            method=f"/{_AUTH_SERVICE}/{method}",
            principal="service:gateway",
            request_id=uuid.uuid4().hex,
        )
        return (("x-palisade-caller", token),)

    async def grant_for(self, token: str) -> Grant:
        """The grant behind an access token; raises AuthenticationFailed or grpc errors."""
        token_hash = hashlib.sha256(token.encode("ascii")).digest()
        trusted = self._feed_trusted()
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
        )
        # Cache only what a live feed can revoke, and only if no eviction (a revocation notice,
        # a feed reconnect, catching up) happened while auth was answering: it may be stale.
        if self._cache.generation == generation and self._feed_trusted():
            self._cache.put(token_hash, grant)
        return grant

    def forget_user(self, user_id: str) -> None:
        """Drops a user's cached tokens now (after they changed their own sessions here)."""
        self._cache.evict_user(user_id)

    async def follow_revocations(self) -> None:
        """Evicts revoked tokens as auth announces them; runs until cancelled."""
        while True:
            call: Any = None
            try:
                call = self._stub.WatchRevocations(
                    auth_pb2.WatchRevocationsRequest(),
                    metadata=self._service_metadata("WatchRevocations"),
                )
                # Auth says so once it has subscribed: from then on no revocation is missed.
                # (A call that failed early also returns initial metadata, just without it.)
                metadata: Any = await call.initial_metadata()
                if ("x-palisade-subscribed", "1") not in tuple(metadata or ()):
                    raise ConnectionError("revocation feed did not confirm the subscription")
                self._lost.clear()
                self._heard_at = self._clock.timestamp()  # the heartbeat deadline starts now
                stream = call.__aiter__()
                while True:
                    self._receive(await self._next_message(stream))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: forget everything, reconnect
                log.warning(
                    "revocation feed lost; cache cleared", extra={"error": type(exc).__name__}
                )
            finally:
                if call is not None and hasattr(call, "cancel"):
                    call.cancel()
            self._lose()
            await asyncio.sleep(_RECONNECT_SECONDS)

    async def _next_message(self, stream: Any) -> Any:
        """The stream's next message; FeedLost if it ends, stays silent past the heartbeat
        deadline, or the cache gave up on it meanwhile (a lookup saw the deadline pass)."""
        message = asyncio.ensure_future(anext(stream))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {message, lost}, timeout=_WATCH_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if message in done:
                    try:
                        return message.result()
                    except StopAsyncIteration:
                        raise FeedLost("revocation stream ended") from None
                if lost in done:
                    raise FeedLost("cache stopped trusting the stream")
                if self._overdue():
                    raise FeedLost("no heartbeat within the deadline")
        finally:
            for task in (message, lost):
                if not task.done():
                    task.cancel()
