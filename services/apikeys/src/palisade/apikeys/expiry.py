"""Recording expiries: the `expired` history entry and security event of every key whose
validity ended (its `expiresAt`, or the end of a rotation's overlap).

A key stops working the moment its validity ends whether or not anything runs (the gateway and
VerifyApiKey compare times); this records that it happened, so the security log hears of
expiries as it hears of every other lifecycle step. Until a pass has run, the history shows the
expiry anyway (queries.py synthesizes it from the key's times).

Each key is recorded exactly once: a conditional UPDATE of `expiry_recorded_at` claims it, so
recorders on several replicas (or a retried pass) never write twice. The event is built from
the row that UPDATE returns, not from the earlier read of the due keys: under Postgres's READ
COMMITTED a revocation can commit in between, and a key revoked before its expiry has no
expiry to tell. Keys are claimed in id order, the order every other multi-key writer
(record_usage, revoking a person's keys) locks rows in, so two writers never wait on each other
in a cycle. Each key is recorded in its own savepoint: one that cannot be recorded is logged and
left due (tried again next pass) without holding back the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from palisade.apikeys.model import SYSTEM, expired_event
from palisade.apikeys.revoking import security_event
from palisade.apikeys.store import ApiKeyStore, KeysTransaction
from palisade.common.clock import Clock
from palisade.common.db import database_unavailable
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
        """Records every expiry that is due; returns how many `expired` events were written.

        One pass walks the due keys once, in id order, a batch per transaction: a key skipped
        for an error is behind the cursor, so it cannot keep the pass from ending."""
        written, after = 0, ""
        while True:
            due, batch_written = await self._record_batch(after)
            written += batch_written
            if len(due) < self._batch_size:
                return written
            after = due[-1]

    async def _record_batch(self, after: str) -> tuple[list[str], int]:
        now = self._clock.now()
        written = 0
        async with self._store.transaction() as tx:
            due = await tx.due_expiries(now, after=after, limit=self._batch_size)
            for key_id in due:
                try:
                    async with tx.conn.begin_nested():
                        written += await self._record(tx, key_id, now)
                except Exception as error:
                    if database_unavailable(error):
                        raise  # the whole batch is lost; the next pass tries again
                    log.exception("expiry of key %s could not be recorded; left due", key_id)
        return due, written

    @staticmethod
    async def _record(tx: KeysTransaction, key_id: str, now: datetime) -> int:
        record = await tx.claim_expiry(key_id, now=now)
        if record is None:
            return 0  # another recorder got there first
        event = expired_event(record, now)
        if event is None:  # revoked before it could expire: nothing to tell
            return 0
        reason = "expired" if record.valid_until == record.expires_at else "overlap_ended"
        await tx.add_event(record.id, record.workspace_id, event)
        await tx.emit(
            security_event("apikey.expired", event.occurred_at, SYSTEM, record, reason=reason)
        )
        return 1

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
