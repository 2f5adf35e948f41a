"""Retention: events older than PALISADE_AUDIT_RETENTION_DAYS are purged, chain by chain.

A chain loses only a prefix: the events up to the last one recorded before the cutoff (ingest
appends in recording order, so everything before it is older too). Before deleting, the whole
part to go is verified (from the anchor, against every checkpoint within it: nothing in it can be
examined afterwards). Then one transaction signs and stores a checkpoint at the purge boundary
and a retention anchor (its own signed note, which only this job makes), moves the chain's start
there and deletes the prefix. `palisade-audit verify` then starts from the anchor: the chain may
start after event 1 only at a signed anchor, and the first remaining event must link to its
head.

Crashes. The signatures are computed in memory and stored by the transaction that deletes, so
a crash anywhere before its commit leaves the chain whole and as it was (verify passes; the next
pass purges it), and after it leaves the purge complete. The witness file gets the boundary's
checkpoint after the commit; a crash before that append loses only that line, which verify does
not need (the anchor vouches for the start, later checkpoints for the rest).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from sqlalchemy import delete, func, select

from palisade.audit.chain.walk import verify_since
from palisade.audit.checkpoints.records import checkpoints_of, set_anchor
from palisade.audit.checkpoints.service import RETENTION, Checkpointer
from palisade.audit.metrics import AuditMetrics
from palisade.audit.model import ChainHead
from palisade.audit.passes import one_replica_at_a_time
from palisade.audit.store import AuditStore
from palisade.audit.tables import events
from palisade.common.clock import Clock
from palisade.common.tasks import running_in_background

log = logging.getLogger("palisade.audit.retention")

_PURGE_LOCK_KEY = 0x617564697400_0002


class Purger:
    def __init__(
        self,
        *,
        store: AuditStore,
        checkpoints: Checkpointer,
        clock: Clock,
        metrics: AuditMetrics,
        retention_days: int,
        interval_seconds: float,
    ) -> None:
        self._store = store
        self._checkpoints = checkpoints
        self._clock = clock
        self._metrics = metrics
        self._retention_days = retention_days
        self._interval = interval_seconds

    async def _boundary(self, head: ChainHead) -> tuple[int, bytes] | None:
        """(size, head) of the longest prefix of the chain recorded before the cutoff."""
        cutoff = self._clock.now() - timedelta(days=self._retention_days)
        async with self._store.transaction() as tx:
            first_kept = (
                await tx.conn.execute(
                    select(func.min(events.c.seq)).where(
                        events.c.workspace_id == head.workspace_id,
                        events.c.recorded_at >= cutoff,
                    )
                )
            ).scalar_one()
            size = head.size if first_kept is None else int(first_kept) - 1
            if size <= head.anchor_size:
                return None
            digest = (
                await tx.conn.execute(
                    select(events.c.hash).where(
                        events.c.workspace_id == head.workspace_id, events.c.seq == size
                    )
                )
            ).scalar_one_or_none()
        return (size, bytes(digest)) if digest is not None else None

    async def purge_chain(self, head: ChainHead) -> int:
        """Purges one chain's expired prefix; returns how many events went."""
        boundary = await self._boundary(head)
        if boundary is None:
            return 0
        size, digest = boundary
        async with self._store.transaction() as tx:
            signed = await checkpoints_of(tx, head.workspace_id)
        until = ChainHead(head.workspace_id, size, digest, head.anchor_size, head.anchor_head, None)
        # The whole part that goes, from the anchor (or the start), against every checkpoint
        # within it: what is deleted can never be examined again, so a change anywhere in it
        # (even one older than the latest checkpoint) must stop the purge, and stay. And the
        # chain must still hold its latest witnessed checkpoint: moving its start past a cut's
        # evidence would hide the cut.
        problems = await self._checkpoints.witness_problems(head.workspace_id)
        problems += await verify_since(
            self._store,
            until,
            None,
            signatures=self._checkpoints.signatures(),
            checkpoints=signed,
        )
        if problems:
            for problem in problems:
                self._metrics.verify_failures.labels(problem.what).inc()
            log.error(
                "chain verification failed; nothing purged",
                extra={"workspace_id": head.workspace_id, "problems": len(problems)},
            )
            return 0
        async with self._store.transaction() as tx:  # all of it, or (on a crash) none
            boundary_checkpoint = await self._checkpoints.sign(
                tx, head.workspace_id, size, digest, RETENTION
            )
            await self._checkpoints.sign_anchor(tx, head.workspace_id, size, digest)
            await set_anchor(tx, head.workspace_id, boundary_checkpoint)
            result = await tx.conn.execute(
                delete(events).where(
                    events.c.workspace_id == head.workspace_id, events.c.seq <= size
                )
            )
        await self._checkpoints.witnessed(boundary_checkpoint)
        purged = int(result.rowcount or 0)
        self._metrics.purged.inc(purged)
        log.info(
            "purged expired events",
            extra={"workspace_id": head.workspace_id, "events": purged, "anchor_size": size},
        )
        return purged

    async def purge(self) -> int:
        """One pass over every chain; returns how many events went."""
        async with self._store.transaction() as tx:
            heads = await tx.chains()
        purged = 0
        for head in heads:
            purged += await self.purge_chain(head)
        return purged

    async def _pass(self) -> None:
        await one_replica_at_a_time(self._store.engine, _PURGE_LOCK_KEY, self.purge)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._pass()
            except Exception:
                log.exception("retention purge failed; will retry")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with running_in_background(self.run(), name="palisade-audit-retention"):
            yield
