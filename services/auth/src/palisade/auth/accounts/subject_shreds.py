"""Shredding a deleted account's subject key in crypto, durably (accounts/deletion.py).

The deletion queues its ShredSubject request in its own transaction (`subject_shred_requests`,
migration 0013): the request commits with the deletion or not at all, and holds the subject
only (`user:<id>`, a pseudonym), never PII. The row is written already claimed, by the deleting
request itself (attempt 1, leased for SELF_LEASE): right after the commit that request calls
ShredSubject, so the common case is immediate, and deletes the row once crypto confirmed.
ShredRelay picks up whatever is left: a call that failed (crypto down: retried with backoff,
1 s doubling to 60 s, forever, since dropping it would leave the person's data readable
wherever it was copied) or a process that died before calling (its lease runs out). Rows are
claimed with palisade.common.outbox_claims (FOR UPDATE SKIP LOCKED on Postgres), so replicas
share the work. ShredSubject is idempotent (a second call answers shredded: false), so the
at-least-once delivery costs a call at most. Once crypto confirmed, whatever was written for
the account after its deletion by a request that had read it before (a link being issued, its
email) is erased too (accounts/erasure.py erase_late_arrivals).

The outbox's depth and age are metrics (palisade_auth_subject_shred_outbox_depth and
_lag_seconds): a shred waiting long means a deleted person's data is still readable where
it was copied (auth's own rows hold none of it by then).
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import Column, Index, Integer, String, Table, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.auth.accounts.erasure import erase_late_arrivals
from palisade.auth.store import TS, AuthTransaction, metadata
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoFailure
from palisade.common.errors import InvalidArgument, Unavailable
from palisade.common.outbox_claims import LeasedOutbox, exponential_backoff
from palisade.common.relay_loop import Wakeup, relay_forever
from palisade.common.tasks import running_in_background

log = logging.getLogger("palisade.auth.subject_shreds")

subject_shred_requests = Table(
    "subject_shred_requests",
    metadata,
    Column("id", String(40), primary_key=True),  # shr_<32 hex>
    Column("subject", String(140), nullable=False),  # "user:usr_…"
    # Wall-clock time of the request (the lag metric); order and ids only otherwise.
    Column("created_at", TS, nullable=False),
    # A lease end (the deleting request's own, or a relay's), or the next retry's time.
    Column("next_attempt_at", TS, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("last_error", String(200), nullable=True),
)
Index("ix_subject_shred_requests_next_attempt_at", subject_shred_requests.c.next_attempt_at)

_T = subject_shred_requests
_OUTBOX = LeasedOutbox(
    _T, columns=(_T.c.subject,), order_by=(_T.c.created_at, _T.c.id), due_when_unset=True
)
# How long the deleting request keeps the relays off its own row: longer than one call.
SELF_LEASE = timedelta(seconds=30)
_FIRST_RETRY_SECONDS = 1
_MAX_RETRY_SECONDS = 60
_SUBJECT = re.compile(r"user:usr_[0-9a-f]{32}")
# What one delivery attempt came to.
_SHREDDED, _FAILED, _UNREACHABLE = "shredded", "failed", "unreachable"


def retry_delay(attempts: int) -> timedelta:
    """Wait after the `attempts`-th failed call: 1 s, 2 s, 4 s, ... at most 60 s."""
    return exponential_backoff(
        attempts, first_seconds=_FIRST_RETRY_SECONDS, max_seconds=_MAX_RETRY_SECONDS
    )


@dataclass(frozen=True)
class ShredRequest:
    id: str
    subject: str
    attempt: int  # the attempt whose claim the holder has


class Shredder(Protocol):
    async def shred_subject(self, subject: str) -> bool:
        """Shreds the subject (palisade.common.crypto_client.CryptoClient); raises on failure."""
        ...


async def queue_shred(tx: AuthTransaction, *, subject: str, now: datetime) -> ShredRequest:
    """Queues, in the caller's transaction, the shred of `subject`, claimed by the caller for
    SELF_LEASE: call ShredRelay.shred_now with the result once the transaction committed.
    ValueError for anything but a user subject (a bug of the caller)."""
    if not _SUBJECT.fullmatch(subject):
        raise ValueError("not a user subject")
    request = ShredRequest(id=f"shr_{uuid.uuid4().hex}", subject=subject, attempt=1)
    await tx.conn.execute(
        insert(_T).values(
            id=request.id,
            subject=subject,
            # The transaction carries no clock of its own; only the lag metric reads this.
            created_at=datetime.now(UTC),
            next_attempt_at=now + SELF_LEASE,
            attempts=request.attempt,
        )
    )
    return request


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.depth = Gauge(
            "palisade_auth_subject_shred_outbox_depth",
            "Subject shreds crypto has not yet confirmed (deleted accounts).",
            registry=registry,
        )
        self.lag = Gauge(
            "palisade_auth_subject_shred_outbox_lag_seconds",
            "Age of the oldest subject shred crypto has not yet confirmed (0: none).",
            registry=registry,
        )
        self.shredded = Counter(
            "palisade_auth_subject_shreds",
            "Subject shreds crypto confirmed.",
            registry=registry,
        )
        self.failures = Counter(
            "palisade_auth_subject_shred_failures",
            "Failed ShredSubject calls, by reason (retried).",
            ("reason",),
            registry=registry,
        )


def _reason(error: Exception) -> str:
    return type(error).__name__[:200]


class ShredRelay:
    """Delivers subject_shred_requests to crypto; see the module docstring."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        shredder: Shredder,
        clock: Clock,
        registry: CollectorRegistry | None = None,
        poll_seconds: float = 1.0,
        batch_size: int = 50,
        lease_seconds: float = 60.0,
    ) -> None:
        if poll_seconds <= 0 or lease_seconds <= 0 or batch_size < 1:
            raise ValueError("poll_seconds, lease_seconds and batch_size must be > 0")
        self._engine = engine
        self._shredder = shredder
        self._clock = clock
        self._metrics = _Metrics(registry or CollectorRegistry())
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._lease = timedelta(seconds=lease_seconds)
        self._wakeup = Wakeup()

    def notify(self) -> None:
        self._wakeup.notify()

    async def shred_now(self, request: ShredRequest) -> bool:
        """The deleting request's own attempt, right after its commit. True if crypto
        confirmed; False if it failed (the relay tries again, after a backoff)."""
        try:
            return await self._deliver(request) == _SHREDDED
        finally:
            with contextlib.suppress(Exception):
                await self.observe()

    async def run_once(self) -> int:
        """Claims up to batch_size due requests and tries each once; returns how many crypto
        confirmed. Updates the depth and lag gauges."""
        try:
            _claimed, shredded = await self._relay_batch()
        finally:
            with contextlib.suppress(Exception):
                await self.observe()
        return shredded

    async def _pass(self) -> bool:
        try:
            claimed, shredded = await self._relay_batch()
        finally:
            with contextlib.suppress(Exception):
                await self.observe()
        return claimed >= self._batch_size and shredded > 0

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        relay = relay_forever(
            self._pass,
            wakeup=self._wakeup,
            poll_seconds=self._poll_seconds,
            log=log,
            what="subject shred relay",
        )
        async with running_in_background(relay, name="palisade-subject-shreds"):
            yield

    async def observe(self) -> tuple[int, float]:
        """(depth, lag seconds) of the outbox, also set on the gauges."""
        async with self._engine.connect() as conn:
            depth, oldest = (
                await conn.execute(select(func.count(), func.min(_T.c.created_at)))
            ).one()
        lag = 0.0 if oldest is None else max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        self._metrics.depth.set(depth)
        self._metrics.lag.set(lag)
        return int(depth), lag

    async def _relay_batch(self) -> tuple[int, int]:
        now = self._clock.now()
        lease_end = now + self._lease
        batch = await _OUTBOX.claim(
            self._engine, now=now, lease_end=lease_end, limit=self._batch_size
        )
        requests = [ShredRequest(c.id, c.row.subject, c.attempt) for c in batch.claims]
        shredded = 0
        for index, request in enumerate(requests):
            if self._clock.now() >= lease_end:
                break  # another relay may own the rest now; they are due again already
            outcome = await self._deliver(request)
            if outcome == _SHREDDED:
                shredded += 1
            elif outcome == _UNREACHABLE:
                # Crypto is away: the rest would fail alike, one timeout each. Back they go
                # with the same backoff, unattempted.
                for rest in requests[index + 1 :]:
                    await self._put_back(rest, "Unavailable", request.attempt)
                break
        return len(requests), shredded

    async def _deliver(self, request: ShredRequest) -> str:
        try:
            new = await self._shredder.shred_subject(request.subject)
        except Exception as error:  # one request's failure must not lose the others
            await self._failed(request, error)
            return _UNREACHABLE if isinstance(error, Unavailable) else _FAILED
        async with self._engine.begin() as conn:
            # Anything written for the account after its deletion (a request that had read it
            # before) goes now that nothing of theirs can be sealed any more.
            await erase_late_arrivals(
                AuthTransaction(conn), request.subject.removeprefix("user:"), self._clock.now()
            )
            # Whoever holds the row now, crypto has done what it asks: it is over.
            await conn.execute(delete(_T).where(_T.c.id == request.id))
        self._metrics.shredded.inc()
        log.info(
            "subject shredded",
            extra={"row_id": request.id, "subject": request.subject, "new": new},
        )
        return _SHREDDED

    async def _failed(self, request: ShredRequest, error: Exception) -> None:
        reason = _reason(error)
        # Crypto refusing the request itself (a bug, an edge key not rolled out) is not an
        # outage: loud, and retried at the longest interval, never dropped.
        slow = isinstance(error, InvalidArgument | CryptoFailure)
        await self._put_back(request, reason, 10**6 if slow else request.attempt)
        self._metrics.failures.labels(reason).inc()
        extra = {"row_id": request.id, "attempt": request.attempt, "reason": reason}
        if slow:
            log.error("crypto refused a subject shred; retrying slowly", extra=extra)
        else:
            log.warning("subject shred not confirmed; will retry", extra=extra)

    async def _put_back(self, request: ShredRequest, reason: str, failures: int) -> None:
        """The row is due again after the backoff for `failures` failed attempts."""
        with contextlib.suppress(Exception):  # if this fails, the lease runs out instead
            async with self._engine.begin() as conn:
                # attempts == ours: if our lease ran out and another relay claimed the row,
                # its outcome is the one that counts.
                await conn.execute(
                    update(_T)
                    .where(_OUTBOX.held(request.id, request.attempt))
                    .values(
                        next_attempt_at=self._clock.now() + retry_delay(failures),
                        last_error=reason,
                    )
                )
