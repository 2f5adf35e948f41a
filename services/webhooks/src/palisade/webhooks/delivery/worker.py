"""The delivery worker: due deliveries claimed, signed, POSTed, recorded and settled.

One loop per process keeps up to `concurrency` attempts in flight, at most `per_endpoint` of
them for any one endpoint (a slow or hanging receiver holds its own slots for at most the
client's deadline and never the others'). It claims more whenever a slot frees, when woken
(the intake rings after queueing, a manual retry may too) or every poll interval.

Each attempt: the endpoint's URL and live secrets (opened through crypto by the endpoint store),
the three Standard Webhooks headers signed over the stored body with every live secret
(webhook-id: the event's id, the same on every retry; webhook-timestamp: this attempt's), one
POST through the SSRF-safe egress client, then the outcome settled (store.py):
- 2xx: succeeded; the endpoint's failure streak ends;
- 410 Gone: failed, and the endpoint is disabled at once (reason "gone");
- anything else (an answer, a timeout, a refused address, ...): retried on the schedule
  (schedule.py, Retry-After honoured when longer), failed once the schedule is spent;
  an endpoint whose every attempt has failed for `disable_after` (5 days) is disabled
  ("failing") and its workspace's owners are emailed (notices.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Protocol

from palisade.common.clock import Clock
from palisade.common.db import database_unavailable
from palisade.common.errors import Unavailable
from palisade.common.relay_loop import Wakeup
from palisade.common.tasks import cancel_and_wait
from palisade.webhooks.delivery.metrics import DeliveryMetrics
from palisade.webhooks.delivery.schedule import RetrySchedule
from palisade.webhooks.delivery.store import ClaimedDelivery, DeliveryStore, Settlement
from palisade.webhooks.egress.client import AttemptResult, DeliveryClient
from palisade.webhooks.model import FAILED, FAILING, GONE, PENDING, SUCCEEDED, DeliveryTarget
from palisade.webhooks.signing import signed_headers

log = logging.getLogger("palisade.webhooks.delivery")

# Wait after the endpoint's URL and secrets could not be opened (crypto away) before trying.
TARGET_RETRY_SECONDS = 5.0
# An endpoint's opened URL and secrets are reused this long by the attempts to it (one crypto
# call and two reads per endpoint per second instead of per attempt; concurrent attempts share
# one lookup). A change (rotation, new URL) reaches deliveries that much later at most: a
# secret rotated out with no overlap may still sign beside the new one for that second, which
# gives a receiver nothing (it verifies with the secret it holds), and the claim re-reads
# `enabled`, so a disabled endpoint gets nothing new.
TARGET_CACHE_SECONDS = 1.0
_TARGET_CACHE_MAX = 10_000
# A delivery's last_error when no request was sent: its endpoint's URL or secrets would not
# open, or the worker itself failed on it.
ENDPOINT_UNREADABLE = "endpoint_unreadable"
INTERNAL_ERROR = "internal_error"
# Outcomes written per settling transaction at most.
_SETTLE_BATCH = 100


class EndpointTargets(Protocol):
    """The endpoint store as the worker needs it."""

    async def delivery_target(self, endpoint_id: str) -> DeliveryTarget | None:
        """The endpoint's URL and live secrets, opened; None if it is gone or disabled."""
        ...

    async def disable(self, endpoint_id: str, reason: str) -> bool:
        """Disables an enabled endpoint (with its webhook.disabled event); False if it was
        not enabled (already disabled, or deleted)."""
        ...


class DisabledNotifier(Protocol):
    def notify(self) -> None:
        """An endpoint was just disabled as failing: email its owners soon."""
        ...


def default_worker_id() -> str:
    """Host and a random tag: which process holds a lease (claimed_by), for operators."""
    return f"{socket.gethostname()[:20]}-{uuid.uuid4().hex[:8]}"


def result_label(result: AttemptResult) -> str:
    if result.succeeded:
        return "succeeded"
    return result.error or f"http_{result.status}"


class DeliveryWorker:
    def __init__(
        self,
        *,
        store: DeliveryStore,
        targets: EndpointTargets,
        client: DeliveryClient,
        clock: Clock,
        schedule: RetrySchedule,
        metrics: DeliveryMetrics,
        concurrency: int = 32,
        per_endpoint: int = 2,
        per_workspace: int | None = None,
        batch_size: int = 50,
        lease_seconds: float = 60.0,
        poll_seconds: float = 0.5,
        disable_after_seconds: float = 5 * 86_400.0,
        notifier: DisabledNotifier | None = None,
        target_cache_seconds: float = TARGET_CACHE_SECONDS,
    ) -> None:
        if lease_seconds <= client.timeout_seconds:
            # A lease shorter than an attempt would let a second worker start the same
            # delivery while the first is still sending it.
            raise ValueError("the claim lease must outlast an attempt's deadline")
        self._store = store
        self._targets = targets
        self._client = client
        self._clock = clock
        self._schedule = schedule
        self._metrics = metrics
        self._concurrency = concurrency
        self._per_endpoint = per_endpoint
        self._batch = batch_size
        self._lease = lease_seconds
        self._poll = poll_seconds
        self._disable_after = timedelta(seconds=disable_after_seconds)
        self._notifier = notifier
        self._wakeup = Wakeup()
        self._busy: Counter[str] = Counter()
        self._busy_workspaces: Counter[str] = Counter()
        # One workspace (its many endpoints hanging, say) holds at most its share of the
        # slots (by default a quarter, and at least one endpoint's), so the others'
        # deliveries always have room.
        self._per_workspace = per_workspace or max(per_endpoint, concurrency // 4)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_claim_full = False
        self._settling: list[
            tuple[ClaimedDelivery, Settlement, datetime, asyncio.Future[datetime | None]]
        ] = []
        self._flusher: asyncio.Task[None] | None = None
        self._target_ttl = target_cache_seconds
        self._target_cache: dict[str, tuple[float, asyncio.Future[DeliveryTarget | None]]] = {}

    def notify(self) -> None:
        """Claims now instead of at the next poll (any thread): new deliveries are due."""
        self._wakeup.notify()

    async def run(self) -> None:
        """Until cancelled: claims whenever a slot is free, attempts concurrently. On
        cancellation the attempts under way are cancelled too; their leases run out and the
        deliveries are attempted again (by this worker after a restart, or another)."""
        try:
            while True:
                claimed, full = 0, False
                try:
                    claimed, full = await self._claim(), self._last_claim_full
                except Exception:
                    log.exception("claiming deliveries failed; will retry")
                if full and claimed and len(self._tasks) < self._concurrency:
                    continue  # a full batch may mean more is due now
                await self._wait_for_work()
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            if self._flusher is not None:
                await cancel_and_wait(self._flusher)
            for _, lookup in self._target_cache.values():
                lookup.cancel()
            self._target_cache.clear()

    async def drain(self) -> int:
        """One pass for tests and tools: claims what is due (repeatedly, while slots allow)
        and waits for every attempt started to settle. Returns how many were attempted."""
        done = 0
        while True:
            claimed = await self._claim()
            done += claimed
            if not self._tasks:
                return done
            await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)

    async def _wait_for_work(self) -> None:
        """Until woken, the poll interval passed, or enough slots are free to make a claim
        worth its transaction (a quarter of them, or all: claiming after every single
        completion would cost one claim query per delivery under load)."""
        refill = max(1, self._concurrency // 4)
        waiter = asyncio.ensure_future(self._wakeup.wait(self._poll))
        try:
            while not waiter.done():
                await asyncio.wait({waiter, *self._tasks}, return_when=asyncio.FIRST_COMPLETED)
                if not self._tasks or self._concurrency - len(self._tasks) >= refill:
                    return
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter

    async def _claim(self) -> int:
        """Claims what fits in the free slots and starts an attempt for each."""
        free = self._concurrency - len(self._tasks)
        self._last_claim_full = False
        if free < 1:
            return 0
        limit = min(free, self._batch)
        claims = await self._store.claim(
            now=self._clock.now(),
            lease_seconds=self._lease,
            limit=limit,
            per_endpoint=self._per_endpoint,
            busy=self._busy,
            per_workspace=self._per_workspace,
            busy_workspaces=self._busy_workspaces,
            max_attempts=self._schedule.max_attempts,
        )
        for claim in claims:
            self._busy[claim.endpoint_id] += 1
            self._busy_workspaces[claim.workspace_id] += 1
            task = asyncio.create_task(self._attempt(claim), name=f"webhook-attempt-{claim.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._last_claim_full = len(claims) == limit
        return len(claims)

    async def _attempt(self, claim: ClaimedDelivery) -> None:
        self._metrics.in_flight.inc()
        try:
            await self._attempt_once(claim)
        except Exception:
            log.exception("webhook attempt %s failed inside the worker", claim.id)
            try:
                # Counted and scheduled like a failed answer, so a delivery that breaks the
                # worker every time ends as failed; if even this fails, the lease runs out
                # and the claim gives the row up once its attempts are spent (store.claim).
                await self._fail_without_sending(claim, INTERNAL_ERROR)
            except Exception:
                log.exception("webhook attempt %s could not be settled", claim.id)
        finally:
            self._metrics.in_flight.dec()
            for busy, key in (
                (self._busy, claim.endpoint_id),
                (self._busy_workspaces, claim.workspace_id),
            ):
                busy[key] -= 1
                if busy[key] <= 0:
                    del busy[key]

    async def _settle(
        self, claim: ClaimedDelivery, outcome: Settlement, now: datetime
    ) -> datetime | None:
        """Settles through the group commit: attempts that finish while a settling transaction
        runs are written together in the next one (store.settle_many)."""
        done: asyncio.Future[datetime | None] = asyncio.get_running_loop().create_future()
        self._settling.append((claim, outcome, now, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="palisade-webhooks-settle")
        # Shielded: an attempt cancelled now (its worker stopping) still has its outcome kept.
        return await asyncio.shield(done)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # attempts finishing in this same turn of the loop join in
        while self._settling:
            batch = self._settling[:_SETTLE_BATCH]
            del self._settling[:_SETTLE_BATCH]
            try:
                results = await self._store.settle_many([item[:3] for item in batch])
            except Exception as exc:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (*_, done), since in zip(batch, results, strict=True):
                if not done.done():
                    done.set_result(since)

    async def _target(self, endpoint_id: str) -> DeliveryTarget | None:
        now = time.monotonic()
        cached = self._target_cache.get(endpoint_id)
        if cached is None or cached[0] <= now:
            if len(self._target_cache) >= _TARGET_CACHE_MAX:
                self._target_cache = {
                    k: v for k, v in self._target_cache.items() if v[0] > now and v[1].done()
                }
            lookup = asyncio.ensure_future(self._targets.delivery_target(endpoint_id))
            cached = (now + self._target_ttl, lookup)
            self._target_cache[endpoint_id] = cached
        try:
            # Shielded: one waiter cancelled (its worker stopping) must not fail the others.
            return await asyncio.shield(cached[1])
        except Exception:
            if self._target_cache.get(endpoint_id) is cached:
                del self._target_cache[endpoint_id]  # the next attempt asks again
            raise

    async def _attempt_once(self, claim: ClaimedDelivery) -> None:
        try:
            target = await self._target(claim.endpoint_id)
        except Exception as exc:
            if isinstance(exc, Unavailable) or database_unavailable(exc):
                # Crypto (or the database) away: no attempt was made, so none is counted;
                # the delivery waits a little instead of spinning against the outage.
                log.warning("webhook target of %s unavailable: %s", claim.id, type(exc).__name__)
                retry_at = self._clock.now() + timedelta(seconds=TARGET_RETRY_SECONDS)
                await self._store.release(claim, retry_at=retry_at)
                return
            # An envelope that does not open (a damaged row, a key gone): that will not get
            # better by itself, so it is a failed attempt like any other, counted, on the
            # schedule and in the delivery log.
            log.warning("webhook target of %s unreadable: %s", claim.id, type(exc).__name__)
            await self._fail_without_sending(claim, ENDPOINT_UNREADABLE)
            return
        if target is None or not target.enabled or not target.secrets:
            # Deleted or disabled since the claim: nothing to send; the row stays as it was
            # (deletion takes it away, enabling again brings it back).
            await self._store.release(claim)
            return
        started = self._clock.now()
        headers = signed_headers(
            target.secrets, claim.event_id, int(started.timestamp()), claim.payload
        )
        result = await self._client.post(target.url, claim.payload, headers)
        self._metrics.attempts.labels(result_label(result)).inc()
        self._metrics.attempt_seconds.observe(result.elapsed)
        now = self._clock.now()
        outcome, label = self._outcome(claim, result, started, now)
        failing_since = await self._settle(claim, outcome, now)
        self._metrics.deliveries.labels(label).inc()
        if label == GONE:
            await self._disable(claim.endpoint_id, GONE)
        elif failing_since is not None and now - failing_since >= self._disable_after:
            await self._disable(claim.endpoint_id, FAILING)

    async def _fail_without_sending(self, claim: ClaimedDelivery, error: str) -> None:
        now = self._clock.now()
        result = AttemptResult(status=0, error=error, retry_after=None, elapsed=0.0)
        self._metrics.attempts.labels(error).inc()
        outcome, label = self._outcome(claim, result, now, now)
        if error == INTERNAL_ERROR and outcome.state == PENDING:
            # As if the worker had died mid-attempt: tried again once a lease would have run
            # out, not hours later, and given up when the schedule's attempts are spent.
            retry_at = now + timedelta(seconds=self._lease)
            outcome = dataclasses.replace(outcome, next_attempt_at=retry_at)
        await self._settle(claim, outcome, now)
        self._metrics.deliveries.labels(label).inc()

    def _outcome(
        self, claim: ClaimedDelivery, result: AttemptResult, started: datetime, now: datetime
    ) -> tuple[Settlement, str]:
        def settled(state: str, next_at: datetime | None) -> Settlement:
            return Settlement(
                state=state,
                status=result.status,
                error=result.error,
                started_at=started,
                duration_ms=max(0, round(result.elapsed * 1000)),
                next_attempt_at=next_at,
            )

        if result.succeeded:
            return settled(SUCCEEDED, None), "succeeded"
        if result.status == 410 and result.error is None:
            return settled(FAILED, None), GONE
        # Retry-After is capped on the round's total: from its first attempt (this one, when
        # none is recorded before it).
        round_start = claim.round_started_at or started
        wait = self._schedule.next_wait(
            claim.round_attempt,
            result.retry_after,
            elapsed=(now - round_start).total_seconds(),
        )
        if wait is None:
            return settled(FAILED, None), "failed"
        return settled(PENDING, now + timedelta(seconds=wait)), "retrying"

    async def _disable(self, endpoint_id: str, reason: str) -> None:
        self._target_cache.pop(endpoint_id, None)
        if not await self._targets.disable(endpoint_id, reason):
            return  # another attempt (or a person) got there first
        self._metrics.disabled.labels(reason).inc()
        log.info("webhook endpoint %s disabled: %s", endpoint_id, reason)
        if reason == FAILING and self._notifier is not None:
            self._notifier.notify()
