"""Recording expiries: the `expired` history entry and security event of every key whose
validity ended (its `expiresAt`, or the end of a rotation's overlap).

A key stops working the moment its validity ends whether or not anything runs (the gateway and
VerifyApiKey compare times); this records that it happened, so the security log hears of
expiries as it hears of every other lifecycle step. Each key is recorded exactly once: a
conditional UPDATE of `expiry_recorded_at` claims it, so recorders on several replicas (or a
retried pass) never write twice. Until a pass has run, the history shows the expiry anyway
(queries.py synthesizes it from the key's times).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from palisade.apikeys.model import SYSTEM, expired_event
from palisade.apikeys.revoking import security_event
from palisade.apikeys.store import ApiKeyStore
from palisade.common.clock import Clock
from palisade.common.tasks import running_in_background

log = logging.getLogger(__name__)


class ExpiryRecorder:
    def __init__(
        self, *, store: ApiKeyStore, clock: Clock, interval_seconds: float, batch_size: int = 200
    ) -> None:
        if interval_seconds <= 0 or batch_size < 1:
            raise ValueError("interval_seconds and batch_size must be positive")
        self._store = store
        self._clock = clock
        self._interval = interval_seconds
        self._batch_size = batch_size

    async def record_due(self) -> int:
        """Records every expiry that is due; returns how many `expired` events were written."""
        written = 0
        while True:
            batch, claimed = await self._record_batch()
            written += batch
            if claimed < self._batch_size:
                return written

    async def _record_batch(self) -> tuple[int, int]:
        now = self._clock.now()
        written = 0
        async with self._store.transaction() as tx:
            due = await tx.due_expiries(now, limit=self._batch_size)
            for record in due:
                if not await tx.mark_expiry_recorded(record.id, now=now):
                    continue  # another recorder got there first
                event = expired_event(record, now)
                if event is None:  # revoked before it could expire: nothing to tell
                    continue
                reason = "expired" if record.valid_until == record.expires_at else "overlap_ended"
                await tx.add_event(record.id, record.workspace_id, event)
                await tx.emit(
                    security_event(
                        "apikey.expired", event.occurred_at, SYSTEM, record, reason=reason
                    )
                )
                written += 1
        return written, len(due)

    async def run(self) -> None:
        while True:
            try:
                await self.record_due()
            except Exception:
                log.exception("expiry recording pass failed; will retry")
            await asyncio.sleep(self._interval)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with running_in_background(self.run(), name="palisade-apikeys-expiry-recorder"):
            yield
