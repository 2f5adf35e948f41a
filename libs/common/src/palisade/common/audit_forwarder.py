"""The audit forwarder: ships a service's security-event outbox to the audit service.

Every service with an `outbox_events` table (palisade.common.outbox) runs one in the
background. A pass takes the oldest pending events, in id order, and calls AuditService.Ingest
with them as one batch (palisade.common.audit_ingest). Audit stores a batch whole or not at all
and deduplicates by event id, so a batch sent again (the answer was lost, the process died
before marking) is never stored twice; the forwarder in turn never sends a row it has marked.

Order. Audit appends each workspace's events in the order given, so the forwarder must never
send out of id order:
- Only one forwarder of a database ships at a time. On Postgres a pass holds a transaction-
  scoped advisory lock (a key per service) from the read to the marks, across the Ingest call:
  another replica's pass finds the lock taken and waits for its next turn. If the holder's
  connection dies the lock goes with it, its marks are rolled back and the next holder sends
  the same events again, which audit deduplicates. SQLite serves one process, which runs one
  forwarder; it holds no transaction across the call (that would stop every writer).
- Ids are handed out when a row is inserted but become visible when its transaction commits,
  so on Postgres a later id can be seen before an earlier one. A pass ships pending rows only
  up to the first hole in the ids and waits for the hole to fill; a hole still open after
  gap_grace_seconds is a transaction that rolled back (or one open that long, whose event then
  goes out late, after the ones it should have preceded), and the pass goes past it.

After Ingest answered OK, the rows are marked forwarded (forwarded_at) in the same transaction
as the turn, and their IP and device are removed from the payload, so the plaintext of those
fields lives only in audit (encrypted there under the subject's key) and no copy lingers in
the outbox. Marking rather than deleting keeps the ids the hole check compares with; forwarded
rows are purged after forwarded_retention.

Failures. Audit unreachable, too slow or refusing us (any status but INVALID_ARGUMENT, or a
timeout): nothing is marked, and the forwarder waits with exponential backoff and jitter
before it tries the same events again; an outage delays events and loses none. INVALID_ARGUMENT
means audit will never take one event of the batch (and stored none of it): the forwarder
sends the events before it (the index audit names, or halves of the batch when it names none)
and then the suspect alone, and only an event refused on its own is set aside (rejected_at,
with audit's error code: kept, never dropped, never sent again unless an operator clears it),
counted and logged without its payload. The events after it keep flowing in order.

Metrics (on the service's registry): palisade_outbox_pending_events,
palisade_outbox_lag_seconds (age of the oldest pending event: the outbox lag),
palisade_outbox_events_forwarded_total, palisade_outbox_batches_failed_total{reason},
palisade_outbox_events_rejected_total{code}.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import Table, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.common.audit_ingest import (
    AuditIngestClient,
    AuditSink,
    BatchRejected,
    IngestFailed,
    OutboxRow,
    UnreadableEvent,
    ingest_event,
    without_pii,
)
from palisade.common.clock import Clock
from palisade.common.grpc_client import ServiceIdentity, relay_channel
from palisade.common.outbox import OUTBOX_WAKE_FLAG, outbox_pending
from palisade.common.outbox_claims import exponential_backoff
from palisade.common.relay_loop import Wakeup
from palisade.common.tasks import running_in_background
from palisade_api.audit.v1 import audit_pb2

log = logging.getLogger("palisade.common.audit_forwarder")

UNREADABLE_CODE = "unreadable_event"
_PURGE_BATCH = 500


def forwarder_lock_key(service: str) -> int:
    """The pg advisory lock key of one service's forwarder (a signed 64-bit number)."""
    digest = hashlib.sha256(f"palisade.audit_forwarder:{service}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class ForwarderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pending = Gauge(
            "palisade_outbox_pending_events",
            "Security events in the outbox not yet forwarded to audit (set-aside ones excluded).",
            registry=registry,
        )
        self.lag = Gauge(
            "palisade_outbox_lag_seconds",
            "Age of the oldest security event not yet forwarded to audit (0: none pending).",
            registry=registry,
        )
        self.forwarded = Counter(
            "palisade_outbox_events_forwarded",
            "Security events audit accepted (stored or already held).",
            registry=registry,
        )
        self.batches_failed = Counter(
            "palisade_outbox_batches_failed",
            "Ingest batches that did not get through and will be sent again, by reason.",
            ("reason",),
            registry=registry,
        )
        self.rejected = Counter(
            "palisade_outbox_events_rejected",
            "Security events audit refused for good, set aside in the outbox, by error code.",
            ("code",),
            registry=registry,
        )


@dataclass(frozen=True)
class ForwardPass:
    """What one pass did."""

    forwarded: int = 0
    rejected: int = 0
    read: int = 0  # pending rows the pass read (a full batch: more may be waiting)
    failed: str | None = None  # why the rest did not get through (a metric label)
    busy: bool = False  # another replica's turn


class _Turn:
    """Where a pass reads and writes: the lock-holding transaction (Postgres), or a short
    transaction per statement (SQLite)."""

    def __init__(self, engine: AsyncEngine, conn: AsyncConnection | None) -> None:
        self._engine = engine
        self._conn = conn

    @property
    def checks_holes(self) -> bool:
        # SQLite writers take turns (BEGIN IMMEDIATE): ids become visible in order.
        return self._conn is not None

    async def rows(self, statement: Any) -> Sequence[Any]:
        if self._conn is not None:
            return (await self._conn.execute(statement)).all()
        async with self._engine.begin() as conn:
            return (await conn.execute(statement)).all()

    async def write(self, statement: Any, params: list[dict[str, Any]] | None = None) -> None:
        if self._conn is not None:
            await self._conn.execute(statement, params)
            return
        async with self._engine.begin() as conn:
            await conn.execute(statement, params)


class AuditForwarder:
    """Forwards one outbox to audit; see the module docstring."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        table: Table,
        sink: AuditSink,
        service: str,
        clock: Clock,
        registry: CollectorRegistry | None = None,
        batch_size: int = 100,
        poll_seconds: float = 1.0,
        first_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        gap_grace_seconds: float = 5.0,
        forwarded_retention: timedelta = timedelta(days=7),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        idle_wait: Callable[[float], Awaitable[None]] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """clock: event times (the lag, forwarded_at). sleep, monotonic and jitter (a number
        in [0, 1)) are injectable so that tests move time instead of waiting for it.
        idle_wait: the wait between passes when the outbox is drained (default: sleep for the
        poll interval); forwarding_to_audit makes it end when a transaction that emitted
        commits. Backoff after a failure always sleeps its full time."""
        if batch_size < 1 or poll_seconds <= 0 or first_backoff_seconds <= 0:
            raise ValueError("batch_size, poll_seconds and first_backoff_seconds must be > 0")
        self._engine = engine
        self._table = table
        self._pending = outbox_pending(table)
        self._sink = sink
        self._lock_key = forwarder_lock_key(service)
        self._clock = clock
        self.metrics = ForwarderMetrics(registry or CollectorRegistry())
        self._batch_size = batch_size
        self._poll_seconds = poll_seconds
        self._first_backoff = first_backoff_seconds
        self._max_backoff = max(max_backoff_seconds, first_backoff_seconds)
        self._gap_grace = gap_grace_seconds
        self._retention = forwarded_retention
        self._sleep = sleep
        self._idle_wait = idle_wait or sleep
        self._monotonic = monotonic
        self._jitter = jitter
        self._holes: dict[int, float] = {}  # first missing id -> when this process saw it
        self._passes = asyncio.Lock()  # one pass at a time in this process

    async def forward_once(self) -> ForwardPass:
        """One pass: up to batch_size pending events shipped (or set aside), in id order."""
        async with self._passes, self._turn() as turn:
            if turn is None:
                return ForwardPass(busy=True)
            rows = await self._read(turn)
            result = await self._ship(turn, rows)
            if result.forwarded:
                await self._purge(turn)
            return result

    async def observe(self) -> tuple[int, float]:
        """(pending events, lag seconds), also set on the gauges."""
        table = self._table
        async with self._engine.connect() as conn:
            count, oldest = (
                await conn.execute(
                    select(func.count(), func.min(table.c.occurred_at)).where(self._pending)
                )
            ).one()
        lag = 0.0 if oldest is None else max(0.0, (self._clock.now() - oldest).total_seconds())
        self.metrics.pending.set(count)
        self.metrics.lag.set(lag)
        return int(count), lag

    def backoff_seconds(self, failures: int) -> float:
        """The wait after `failures` failed passes in a row: exponential, with jitter (half
        fixed, half random, so replicas that failed together do not retry together)."""
        ceiling = exponential_backoff(
            failures, first_seconds=self._first_backoff, max_seconds=self._max_backoff
        ).total_seconds()
        return ceiling / 2 + ceiling / 2 * self._jitter()

    async def run(self) -> None:
        """Forwards until cancelled; no error stops it."""
        failures = 0
        while True:
            try:
                result = await self.forward_once()
            except Exception:
                # Database errors name tables and ids, never payloads.
                log.exception("audit forwarder pass failed; will retry")
                self.metrics.batches_failed.labels("database").inc()
                result = ForwardPass(failed="database")
            with contextlib.suppress(Exception):
                await self.observe()
            if result.failed is not None:
                failures += 1
                await self._sleep(self.backoff_seconds(failures))
                continue
            failures = 0
            progressed = result.forwarded + result.rejected > 0
            if not (progressed and result.read >= self._batch_size):
                await self._idle_wait(self._poll_seconds)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with running_in_background(self.run(), name="palisade-audit-forwarder"):
            yield

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[_Turn | None]:
        if self._engine.dialect.name != "postgresql":
            yield _Turn(self._engine, None)
            return
        async with self._engine.begin() as conn:
            taken = await conn.execute(select(func.pg_try_advisory_xact_lock(self._lock_key)))
            yield _Turn(self._engine, conn) if taken.scalar_one() else None

    async def _read(self, turn: _Turn) -> list[OutboxRow]:
        table = self._table
        found = await turn.rows(
            select(
                table.c.id,
                table.c.event_id,
                table.c.event_type,
                table.c.occurred_at,
                table.c.payload,
            )
            .where(self._pending)
            .order_by(table.c.id)
            .limit(self._batch_size)
        )
        rows = [OutboxRow(r.id, r.event_id, r.event_type, r.occurred_at, r.payload) for r in found]
        if not rows or not turn.checks_holes:
            return rows
        [(before,)] = await turn.rows(select(func.max(table.c.id)).where(table.c.id < rows[0].id))
        return self._before_first_hole(rows, (before or 0) + 1)

    def _before_first_hole(self, rows: list[OutboxRow], expected: int) -> list[OutboxRow]:
        """The rows up to the first hole in the ids still within its grace period."""
        now = self._monotonic()
        kept: list[OutboxRow] = []
        for row in rows:
            if row.id != expected:
                seen = self._holes.setdefault(expected, now)
                if now - seen < self._gap_grace:
                    break
                log.warning(
                    "outbox ids missing past the grace period; forwarding past them",
                    extra={"first_missing_id": expected, "next_id": row.id},
                )
            kept.append(row)
            expected = row.id + 1
        if kept:
            self._holes = {k: v for k, v in self._holes.items() if k > kept[-1].id}
        return kept

    async def _ship(self, turn: _Turn, rows: list[OutboxRow]) -> ForwardPass:
        """Sends rows in order, isolating any event audit refuses; stops at a failure."""
        forwarded = rejected = 0
        queue = list(rows)
        limit = len(queue)  # how many of the queue's head the next call may carry
        while queue:
            chunk: list[tuple[OutboxRow, audit_pb2.IngestEvent]] = []
            for row in queue[:limit]:
                try:
                    chunk.append((row, ingest_event(row)))
                except UnreadableEvent:
                    break
            if not chunk:  # the head cannot be read: no audit would take it
                await self._reject(turn, queue.pop(0), UNREADABLE_CODE)
                rejected += 1
                limit = len(queue)
                continue
            try:
                await self._sink.ingest([event for _, event in chunk])
            except BatchRejected as refusal:
                if len(chunk) == 1:
                    await self._reject(turn, queue.pop(0), refusal.code)
                    rejected += 1
                    limit = len(queue)
                elif refusal.index:  # send what precedes the named event, then it alone
                    limit = refusal.index
                else:
                    limit = 1 if refusal.index == 0 else len(chunk) // 2
                continue
            except Exception as error:
                reason = error.reason if isinstance(error, IngestFailed) else type(error).__name__
                self.metrics.batches_failed.labels(reason).inc()
                log.warning(
                    "security events not forwarded to audit; will retry",
                    extra={"reason": reason, "events": len(queue), "first_row_id": queue[0].id},
                )
                return ForwardPass(forwarded, rejected, len(rows), failed=reason)
            await self._mark_forwarded(turn, [row for row, _ in chunk])
            forwarded += len(chunk)
            del queue[: len(chunk)]
            limit = len(queue)
        return ForwardPass(forwarded, rejected, len(rows))

    async def _mark_forwarded(self, turn: _Turn, rows: list[OutboxRow]) -> None:
        table = self._table
        await turn.write(
            update(table)
            .where(table.c.id == bindparam("row_id"), table.c.forwarded_at.is_(None))
            .values(forwarded_at=self._clock.now(), payload=bindparam("clean_payload"))
            .execution_options(synchronize_session=False),
            [{"row_id": row.id, "clean_payload": without_pii(row.payload)} for row in rows],
        )
        self.metrics.forwarded.inc(len(rows))

    async def _reject(self, turn: _Turn, row: OutboxRow, code: str) -> None:
        table = self._table
        await turn.write(
            update(table)
            .where(table.c.id == row.id)
            .values(rejected_at=self._clock.now(), rejected_code=code)
        )
        self.metrics.rejected.labels(code).inc()
        log.error(
            "security event refused by audit; set aside in the outbox",
            extra={
                "row_id": row.id,
                "event_id": row.event_id,
                "event_type": row.event_type,
                "code": code,
            },
        )

    async def _purge(self, turn: _Turn) -> None:
        """Deletes forwarded rows past their retention, oldest first, a bounded number per
        pass; the newest forwarded row stays (the hole check compares with it)."""
        table = self._table
        newest = select(func.max(table.c.id)).where(table.c.forwarded_at.is_not(None))
        expired = (
            select(table.c.id)
            .where(
                table.c.forwarded_at < self._clock.now() - self._retention,
                table.c.id < newest.scalar_subquery(),
            )
            .order_by(table.c.id)
            .limit(_PURGE_BATCH)
        )
        await turn.write(delete(table).where(table.c.id.in_(expired)))


# After a commit rang, the forwarder waits this long before its pass, so the events of
# transactions committing around the same time travel in one batch: under load a busy service
# makes at most about ten passes a second (each has a fixed cost in its own CPU and audit's),
# and alone an event still reaches audit within about a tenth of a second.
COALESCE_SECONDS = 0.1


async def woken_or_polled(wakeup: Wakeup, seconds: float) -> None:
    """The forwarder's idle wait: until a transaction that emitted commits (see
    palisade.common.outbox.OUTBOX_WAKE_FLAG) or the poll interval ends, then a short pause to
    gather the events committed alongside."""
    await wakeup.wait(seconds)
    await asyncio.sleep(COALESCE_SECONDS)


@asynccontextmanager
async def forwarding_to_audit(
    *,
    target: str,
    identity: ServiceIdentity,
    engine: AsyncEngine,
    table: Table,
    clock: Clock,
    registry: CollectorRegistry,
    batch_size: int,
    poll_seconds: float,
) -> AsyncIterator[AuditForwarder]:
    """A service's forwarder, running for the duration of the block (its composition root
    enters this beside its other relays). The channel connects lazily: the service starts,
    and its events wait in the outbox, while audit is not up."""
    channel = relay_channel(target)
    wakeup = Wakeup()
    try:
        forwarder = AuditForwarder(
            engine=engine,
            table=table,
            sink=AuditIngestClient(channel=channel, identity=identity),
            service=identity.service,
            clock=clock,
            registry=registry,
            batch_size=batch_size,
            poll_seconds=poll_seconds,
            idle_wait=partial(woken_or_polled, wakeup),
        )
        async with wakeup.ring_on_checkin(engine, OUTBOX_WAKE_FLAG), forwarder.running():
            yield forwarder
    finally:
        await channel.close(None)
