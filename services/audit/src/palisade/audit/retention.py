"""Retention: events older than PALISADE_AUDIT_RETENTION_DAYS are purged, chain by chain.

A chain loses only a prefix: the events up to the last one recorded before the cutoff (ingest
appends in recording order, so everything before it is older too). Before deleting, the whole
part to go is verified (from the anchor, against every checkpoint within it: nothing in it can be
examined afterwards) and a checkpoint is signed at the purge boundary; it becomes the chain's
anchor, in the same transaction as the delete. `palisade-audit verify` then starts from the
anchor: the first remaining event must link to the head the anchor's signature vouches for.
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
        # (even one older than the latest checkpoint) must stop the purge, and stay.
        problems = await verify_since(
            self._store,
            until,
            None,
            signature_ok=self._checkpoints.signature_ok(),
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
        async with self._store.transaction() as tx:
            anchor = await self._checkpoints.sign(tx, head.workspace_id, size, digest, RETENTION)
            await set_anchor(tx, head.workspace_id, anchor)
            result = await tx.conn.execute(
                delete(events).where(
                    events.c.workspace_id == head.workspace_id, events.c.seq <= size
                )
            )
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
