"""API keys at the edge: checked offline, verified by the apikeys service, cached, revoked live.

A key is refused without any lookup when its checksum does not match (palisade.common.
api_key_format), so a made-up key costs one CRC32 here and nothing anywhere else. A well-formed
key is looked up by its SHA-256 through VerifyApiKey and its grant cached under the same hash,
the hash the apikeys service's revocation feed announces. As with access tokens, the cache is
trusted only while that feed is caught up and heard from (palisade.gateway.feed_follower): on a
hit a key request costs no gRPC call at all.

Refusals are cached too, briefly and in bounded memory: a key that is unknown, revoked, past
its rotation overlap or expired never becomes valid again (an unknown key could only become
valid by someone minting that exact random value), so a client retrying a dead key in a loop
reaches the key service once per refusal lifetime instead of once per request.

Last-used times and IPs are collected here and sent in batches (UsageRecorder): never a write
per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from palisade.common.api_key_format import MalformedKey, shape_of
from palisade.common.caller import AssertionSigner
from palisade.common.clock import Clock
from palisade.gateway.access import Forbidden, KeyGrant
from palisade.gateway.edge_auth import AuthenticationFailed, own_call_metadata
from palisade.gateway.feed_follower import FeedFollower
from palisade.gateway.limits import RateLimitPolicy
from palisade.gateway.problems import trailers_of
from palisade.gateway.token_cache import IndexedCache
from palisade_api.apikeys.v1 import apikeys_pb2

log = logging.getLogger("palisade.gateway.keys")
_SERVICE = apikeys_pb2.DESCRIPTOR.services_by_name["ApiKeysService"].full_name
_KEY_ID, _WORKSPACE = 0, 1
_REFUSALS_KEPT = 10_000
_REFUSAL_SECONDS = 60.0
_USAGE_BATCH = 500


class KeyCache(IndexedCache[KeyGrant]):
    """Verified API keys, evicted by key hash, key id or workspace."""

    def __init__(self, *, max_entries: int, max_age_seconds: float, clock: Clock) -> None:
        super().__init__(
            max_entries=max_entries,
            max_age_seconds=max_age_seconds,
            clock=clock,
            expires_at=lambda grant: grant.valid_until,
            indexes=(lambda grant: grant.key_id, lambda grant: grant.workspace_id),
        )

    def evict(self, key_hashes: Iterable[bytes], key_ids: Iterable[str]) -> None:
        self.evict_hashes(key_hashes)
        self.evict_indexed(_KEY_ID, key_ids)

    def evict_workspace(self, workspace_id: str) -> None:
        self.evict_indexed(_WORKSPACE, (workspace_id,))


def service_metadata(signer: AssertionSigner, method: str) -> tuple[tuple[str, str], ...]:
    """The gateway's own assertion for one call to the apikeys service (used once)."""
    return own_call_metadata(signer, "apikeys", f"/{_SERVICE}/{method}")


class UsageRecorder:
    """Latest use (time, client IP) per key, sent to the apikeys service every few seconds."""

    def __init__(
        self,
        *,
        stub: Any,  # apikeys_pb2_grpc.ApiKeysServiceStub on an aio channel
        signer: AssertionSigner,
        clock: Clock,
        timeout: float,
        flush_seconds: float = 5.0,
        max_pending: int = 100_000,
    ) -> None:
        self._stub = stub
        self._signer = signer
        self._clock = clock
        self._timeout = timeout
        self._flush_seconds = flush_seconds
        self._max_pending = max_pending
        self._pending: dict[str, tuple[float, str]] = {}

    def note(self, key_id: str, client_ip: str) -> None:
        # Bounded: past the limit new keys wait for the next flush (their use is not lost for
        # keys already pending; a key first seen while full is recorded on a later request).
        if key_id in self._pending or len(self._pending) < self._max_pending:
            self._pending[key_id] = (self._clock.timestamp(), client_ip)

    async def flush(self) -> None:
        """Sends what is pending; on failure keeps it (newer uses win) for the next flush."""
        pending, self._pending = self._pending, {}
        items = list(pending.items())
        for start in range(0, len(items), _USAGE_BATCH):
            batch = items[start : start + _USAGE_BATCH]
            request = apikeys_pb2.RecordKeyUsageRequest()
            for key_id, (used_at, ip) in batch:
                usage = request.usages.add(key_id=key_id, ip=ip)
                usage.last_used_at.FromNanoseconds(int(used_at * 1e9))
            try:
                await self._stub.RecordKeyUsage(
                    request,
                    metadata=service_metadata(self._signer, "RecordKeyUsage"),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as error:
                log.warning("could not record key usage", extra={"error": error.code().name})
                for key_id, used in items[start:]:
                    newer = self._pending.get(key_id)
                    if newer is None or newer[0] < used[0]:
                        self._pending[key_id] = used
                return

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._flush_seconds)
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())  # what was noted before shutdown


class KeyAuthenticator:
    """The gateway's ApiKeyVerifier: checksum, cache, VerifyApiKey, origin and validity."""

    def __init__(
        self,
        *,
        stub: Any,  # apikeys_pb2_grpc.ApiKeysServiceStub on an aio channel
        signer: AssertionSigner,
        cache: KeyCache,
        usage: UsageRecorder,
        timeout: float,
        clock: Clock,
        heartbeat_deadline_seconds: float = 2.0,
        on_lookup: Callable[[bool], None] = lambda hit: None,
    ) -> None:
        self._stub = stub
        self._signer = signer
        self._cache = cache
        self._usage = usage
        self._on_lookup = on_lookup
        self._timeout = timeout
        self._clock = clock
        self._refused: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._limits: RateLimitPolicy | None = None
        self._feed = FeedFollower(
            name="key revocations",
            open_stream=lambda: self._stub.WatchRevocations(
                apikeys_pb2.WatchKeyRevocationsRequest(),
                metadata=service_metadata(self._signer, "WatchRevocations"),
            ),
            on_notice=lambda message: self._cache.evict(message.key_hashes, message.key_ids),
            on_reset=self._cache.clear,
            clock=clock,
            heartbeat_deadline_seconds=heartbeat_deadline_seconds,
        )

    @property
    def feed_connected(self) -> bool:
        return self._feed.caught_up

    def limit_lookups(self, limits: RateLimitPolicy) -> None:
        """Spend a client's lookup budget on every cache miss (see palisade.gateway.limits)."""
        self._limits = limits

    async def verify(self, key: str, *, origin: str | None, client_ip: str = "") -> KeyGrant:
        try:
            shape = shape_of(key)
        except MalformedKey:
            raise AuthenticationFailed("invalid_api_key", "invalid API key") from None
        key_hash = hashlib.sha256(key.encode("ascii")).digest()
        now = self._clock.timestamp()
        trusted = self._feed.trusted()
        grant = self._cache.get(key_hash) if trusted else None
        self._on_lookup(grant is not None)
        if grant is None:
            publishable = shape.type == "publishable"
            grant = await self._lookup(key_hash, now, client_ip, publishable, cache=trusted)
        if now >= grant.valid_until:  # expired, or its rotation overlap ended
            self._cache.evict_hashes((key_hash,))
            raise _refusal(_ended_code(grant))
        if grant.publishable and (origin is None or origin not in grant.allowed_origins):
            # Exact match only: a publishable key lives in a web page, and Origin is what the
            # browser says about that page (a server can claim any, so keep their scopes small).
            raise Forbidden("origin_not_allowed", "this key is not accepted from this origin")
        self._usage.note(grant.key_id, client_ip)
        return grant

    async def _lookup(
        self, key_hash: bytes, now: float, client_ip: str, publishable: bool, *, cache: bool
    ) -> KeyGrant:
        refused = self._refused.get(key_hash)
        if refused is not None:
            if now < refused[1]:
                raise _refusal(refused[0])
            del self._refused[key_hash]
        if self._limits is not None and cache:
            # A genuine miss. (While the feed is not trusted every request looks the key up,
            # as for tokens; counting those would refuse honest traffic during a feed outage.)
            await self._limits.spend_client_lookup(client_ip, publishable=publishable)
        generation = self._cache.generation
        try:
            reply = await self._stub.VerifyApiKey(
                apikeys_pb2.VerifyApiKeyRequest(key_hash=key_hash),
                metadata=service_metadata(self._signer, "VerifyApiKey"),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            code = trailers_of(error).get("palisade-error-code", "")
            if code not in ("invalid_api_key", "key_expired"):
                # The key service refused the gateway itself (e.g. its caller assertion during
                # an edge-key rotation or clock skew): says nothing about the key, so nothing is
                # cached and the client sees an outage, not a verdict on its key.
                log.warning("key verification refused the gateway", extra={"code": code})
                raise
            self._remember_refusal(key_hash, code, now)
            raise _refusal(code) from None
        grant = _grant_of(reply)
        # As for tokens: only what a live feed can revoke, and only if nothing was evicted
        # while the key service was answering.
        if cache and self._cache.generation == generation and self._feed.trusted():
            self._cache.put(key_hash, grant)
        return grant

    def _remember_refusal(self, key_hash: bytes, code: str, now: float) -> None:
        self._refused[key_hash] = (code, now + _REFUSAL_SECONDS)
        self._refused.move_to_end(key_hash)
        while len(self._refused) > _REFUSALS_KEPT:
            self._refused.popitem(last=False)

    def forget_workspace(self, workspace_id: str) -> None:
        """Drops a workspace's cached keys now (after its people changed keys here)."""
        self._cache.evict_workspace(workspace_id)

    async def follow_revocations(self) -> None:
        await self._feed.follow()


def _grant_of(reply: Any) -> KeyGrant:
    valid_until = (
        reply.valid_until.ToNanoseconds() / 1e9 if reply.HasField("valid_until") else float("inf")
    )
    return KeyGrant(
        key_id=reply.key_id,
        workspace_id=reply.workspace_id,
        scopes=frozenset(reply.scopes),
        publishable=reply.type == "publishable",
        allowed_origins=tuple(reply.allowed_origins),
        mode=reply.mode,
        created_by=reply.created_by,
        requests_per_minute=reply.rate_limit.requests_per_minute,
        burst=reply.rate_limit.burst,
        valid_until=valid_until,
        valid_until_is_expiry=reply.valid_until_is_expiry,
    )


def _ended_code(grant: KeyGrant) -> str:
    return "key_expired" if grant.valid_until_is_expiry else "invalid_api_key"


def _refusal(code: str) -> AuthenticationFailed:
    if code == "key_expired":
        return AuthenticationFailed("key_expired", "this API key has expired")
    return AuthenticationFailed("invalid_api_key", "invalid API key")
