"""The relay: sends queued key revocation requests to apikeys' RevokeKeysOfUser.

Delivery is at-least-once and never gives up. A relay first *claims* due rows in a short
transaction (Postgres: SELECT ... FOR UPDATE SKIP LOCKED, so replicas take disjoint rows
without waiting; SQLite: BEGIN IMMEDIATE makes the transaction exclusive), counting the
attempt and moving next_attempt_at one lease ahead. It then calls apikeys with no transaction
open and deletes each row apikeys answered OK for. A failed call puts the row back with an
exponential backoff (1 s, 2 s, 4 s, ... at most 60 s); if the process dies mid-call, the lease
runs out and another relay sends it again. RevokeKeysOfUser is idempotent (a second call finds
no live key left), so a duplicate costs a call, never a wrong answer.

No refusal is final: a refusal that retrying cannot fix by itself (PERMISSION_DENIED or
UNAUTHENTICATED: edge keys not rolled out yet; INVALID_ARGUMENT: a bug) is logged as an error
and retried at the longest interval, because dropping it would leave the person's keys
working. The outbox depth and lag are exported for alerts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.auth.accounts.key_revocations import WAKE_FLAG, key_revocation_requests
from palisade.common.clock import Clock
from palisade.common.grpc_client import ServiceIdentity, relay_channel
from palisade.common.outbox_claims import LeasedOutbox, exponential_backoff
from palisade.common.relay_loop import Wakeup, relay_forever
from palisade.common.tasks import running_in_background
from palisade_api.apikeys.v1 import apikeys_pb2, apikeys_pb2_grpc

log = logging.getLogger("palisade.auth.key_revocations")

_T = key_revocation_requests
# Oldest request first; NULL next_attempt_at: never tried, due at once.
_OUTBOX = LeasedOutbox(
    _T,
    columns=(_T.c.user_id, _T.c.workspace_id, _T.c.reason),
    order_by=(_T.c.created_at, _T.c.id),
    due_when_unset=True,
)
_FIRST_RETRY_SECONDS = 1
_MAX_RETRY_SECONDS = 60
_REVOKE_KEYS_OF_USER = (
    "/" + apikeys_pb2.DESCRIPTOR.services_by_name["ApiKeysService"].full_name + "/RevokeKeysOfUser"
)
# Refusals that mean a misconfiguration or a bug, not an outage: loud, and retried slowly.
_NOT_TRANSIENT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNIMPLEMENTED,
}
# apikeys unreachable or overloaded: the rest of a batch would fail the same way.
_UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def apikeys_channel(target: str) -> grpc.aio.Channel:
    """The channel to apikeys; it connects lazily, so auth starts before apikeys is up."""
    return relay_channel(target)


def retry_delay(attempts: int) -> timedelta:
    """Wait after the `attempts`-th failed attempt: 1 s, 2 s, 4 s, ... at most 60 s."""
    return exponential_backoff(
        attempts, first_seconds=_FIRST_RETRY_SECONDS, max_seconds=_MAX_RETRY_SECONDS
    )


@dataclass(frozen=True)
class KeyRevocationRequest:
    id: str
    user_id: str
    workspace_id: str | None
    reason: str


class KeyRevoker(Protocol):
    async def revoke_keys_of_user(self, request: KeyRevocationRequest) -> int:
        """Revokes the person's keys; returns how many this call revoked. Raises on failure."""
        ...


class ApiKeysRevoker:
    """Calls apikeys' RevokeKeysOfUser as service:auth (the auth->apikeys edge)."""

    def __init__(
        self, *, channel: grpc.aio.Channel, identity: ServiceIdentity, timeout: float = 30.0
    ) -> None:
        self._stub = apikeys_pb2_grpc.ApiKeysServiceStub(channel)
        self._identity = identity
        # A person with thousands of keys is revoked in batches inside one call.
        self._timeout = timeout

    async def revoke_keys_of_user(self, request: KeyRevocationRequest) -> int:
        response = await self._stub.RevokeKeysOfUser(
            apikeys_pb2.RevokeKeysOfUserRequest(
                user_id=request.user_id,
                workspace_id=request.workspace_id or "",
                reason=request.reason,
            ),
            metadata=self._identity.metadata("apikeys", _REVOKE_KEYS_OF_USER),
            timeout=self._timeout,
        )
        return int(response.revoked)


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.depth = Gauge(
            "palisade_auth_key_revocation_outbox_depth",
            "Key revocation requests apikeys has not yet confirmed.",
            registry=registry,
        )
        self.lag = Gauge(
            "palisade_auth_key_revocation_outbox_lag_seconds",
            "Age of the oldest key revocation request apikeys has not yet confirmed (0: none).",
            registry=registry,
        )
        self.delivered = Counter(
            "palisade_auth_key_revocations_delivered",
            "Key revocation requests apikeys confirmed.",
            registry=registry,
        )
        self.failures = Counter(
            "palisade_auth_key_revocation_failures",
            "Failed RevokeKeysOfUser calls, by gRPC status (retried).",
            ("code",),
            registry=registry,
        )


@dataclass(frozen=True)
class _Claim:
    request: KeyRevocationRequest
    attempt: int  # this attempt's number, from 1


def _code(error: Exception) -> str:
    """What goes to last_error, the log and the metric label: a status name or a class name."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__[:200]


class KeyRevocationRelay:
    """Delivers key_revocation_requests to apikeys; see the module docstring."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        revoker: KeyRevoker,
        clock: Clock,
        registry: CollectorRegistry | None = None,
        poll_seconds: float = 1.0,
        batch_size: int = 50,
        lease_seconds: float = 120.0,
    ) -> None:
        if poll_seconds <= 0 or lease_seconds <= 0 or batch_size < 1:
            raise ValueError("poll_seconds, lease_seconds and batch_size must be > 0")
        self._engine = engine
        self._revoker = revoker
        self._clock = clock
        self._metrics = _Metrics(registry or CollectorRegistry())
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        # How long a claim keeps other relays off a row; longer than one call's timeout.
        self._lease = timedelta(seconds=lease_seconds)
        self._wakeup = Wakeup()

    def notify(self) -> None:
        """Wakes the relay now instead of at its next poll (any thread)."""
        self._wakeup.notify()

    async def run_once(self) -> int:
        """Claims up to batch_size due requests and tries each once; returns how many apikeys
        confirmed. Updates the depth and lag gauges."""
        try:
            _claimed, delivered = await self._relay_batch()
        finally:
            with contextlib.suppress(Exception):
                await self.observe()
        return delivered

    async def _pass(self) -> bool:
        try:
            claimed, delivered = await self._relay_batch()
        finally:
            with contextlib.suppress(Exception):
                await self.observe()
        return claimed >= self._batch_size and delivered > 0

    async def run(self) -> None:
        """Relays until cancelled. No error stops it: it logs and tries again at the next poll."""
        await relay_forever(
            self._pass,
            wakeup=self._wakeup,
            poll_seconds=self._poll_seconds,
            log=log,
            what="key revocation relay",
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Runs the relay in the background for the duration of the block, woken whenever a
        connection that queued a request goes back to this engine's pool (after its commit)."""
        async with (
            self._wakeup.ring_on_checkin(self._engine, WAKE_FLAG),
            running_in_background(self.run(), name="palisade-key-revocation-relay"),
        ):
            yield

    async def observe(self) -> tuple[int, float]:
        """(depth, lag seconds) of the outbox, also set on the gauges."""
        async with self._engine.connect() as conn:
            depth, oldest = (
                await conn.execute(select(func.count(), func.min(_T.c.created_at)))
            ).one()
        # created_at is wall-clock time (the writer has no injected clock): so is this.
        lag = 0.0 if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        self._metrics.depth.set(depth)
        self._metrics.lag.set(lag)
        return int(depth), lag

    async def _relay_batch(self) -> tuple[int, int]:
        now = self._clock.now()
        lease_end = now + self._lease
        claims = await self._claim(now, lease_end)
        delivered = 0
        for index, claim in enumerate(claims):
            if self._clock.now() >= lease_end:
                break  # another relay may own the rest now; they are due again already
            try:
                revoked = await self._revoker.revoke_keys_of_user(claim.request)
            except Exception as error:  # one request's failure must not lose the others
                await self._failed(claim, error)
                if isinstance(error, grpc.aio.AioRpcError) and error.code() in _UNREACHABLE:
                    # apikeys is away: the rest would wait for one timeout each. They go back
                    # with the same backoff, unattempted calls counted as attempts.
                    for rest in claims[index + 1 :]:
                        await self._failed(rest, error, attempted=False)
                    break
                continue
            await self._delivered(claim, revoked)
            delivered += 1
        return len(claims), delivered

    async def _claim(self, now: datetime, lease_end: datetime) -> Sequence[_Claim]:
        batch = await _OUTBOX.claim(
            self._engine, now=now, lease_end=lease_end, limit=self._batch_size
        )
        return [
            _Claim(
                KeyRevocationRequest(c.id, c.row.user_id, c.row.workspace_id, c.row.reason),
                c.attempt,
            )
            for c in batch.claims
        ]

    async def _delivered(self, claim: _Claim, revoked: int) -> None:
        async with self._engine.begin() as conn:
            # Whoever holds the row now, apikeys has done what it asks: it is over.
            await conn.execute(delete(_T).where(_T.c.id == claim.request.id))
        self._metrics.delivered.inc()
        log.info(
            "api keys revoked",
            extra={
                "row_id": claim.request.id,
                "user_id": claim.request.user_id,
                "workspace_id": claim.request.workspace_id or "*",
                "reason": claim.request.reason,
                "revoked": revoked,
                "attempt": claim.attempt,
            },
        )

    async def _failed(self, claim: _Claim, error: Exception, *, attempted: bool = True) -> None:
        code = _code(error)
        slow = isinstance(error, grpc.aio.AioRpcError) and error.code() in _NOT_TRANSIENT
        delay = retry_delay(10**6 if slow else claim.attempt)
        async with self._engine.begin() as conn:
            # attempts == ours: if our lease ran out and another relay claimed the row, its
            # outcome is the one that counts.
            await conn.execute(
                update(_T)
                .where(_OUTBOX.held(claim.request.id, claim.attempt))
                .values(next_attempt_at=self._clock.now() + delay, last_error=code)
            )
        if not attempted:
            return
        self._metrics.failures.labels(code).inc()
        extra = {"row_id": claim.request.id, "attempt": claim.attempt, "reason": code}
        if slow:
            log.error("apikeys refused a key revocation; retrying slowly", extra=extra)
        else:
            log.warning("key revocation not delivered; will retry", extra=extra)
