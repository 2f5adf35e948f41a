"""Signing checkpoints: on demand (GetCheckpoint), periodically, and at a retention purge.

A checkpoint says "this chain's first <size> events end in <head>", signed with the current
Ed25519 key. Before signing, the part of the chain added since the last checkpoint is verified
(hashes, links, positions): a signature must never vouch for rows someone changed in the
database meanwhile. The chain-head row is read first and the checkpoint covers exactly what
was verified, so appends running at the same time neither wait nor are covered half.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from palisade.audit.chain.verify import Problem
from palisade.audit.chain.walk import SignatureCheck, signature_check, verify_since
from palisade.audit.checkpoints.notes import note
from palisade.audit.checkpoints.records import (
    checkpointed_sizes,
    insert_checkpoint,
    latest_checkpoint,
)
from palisade.audit.checkpoints.signing_keys import SigningKeyHolder, SigningKeysInvalid
from palisade.audit.errors import ChainIntegrityError, SigningKeyUnavailable
from palisade.audit.metrics import AuditMetrics
from palisade.audit.model import GENESIS_HASH, ChainHead, CheckpointRecord
from palisade.audit.passes import one_replica_at_a_time
from palisade.audit.store import AuditStore, AuditTransaction
from palisade.common.clock import Clock
from palisade.common.tasks import running_in_background

log = logging.getLogger("palisade.audit.checkpoints")

PERIODIC, ON_DEMAND, RETENTION = "periodic", "on_demand", "retention"
# Postgres advisory lock: one replica at a time runs the periodic pass.
_PERIODIC_LOCK_KEY = 0x617564697400_0001


class Checkpointer:
    def __init__(
        self,
        *,
        store: AuditStore,
        keys: SigningKeyHolder,
        clock: Clock,
        metrics: AuditMetrics,
        interval_seconds: float,
    ) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        self._metrics = metrics
        self._interval = interval_seconds

    def signature_ok(self) -> SignatureCheck:
        return signature_check(self._keys.current.verify)

    def _signed_at(self) -> datetime:
        return self._clock.now().replace(microsecond=0)

    async def sign(
        self, tx: AuditTransaction, workspace_id: str, size: int, head: bytes, kind: str
    ) -> CheckpointRecord:
        """Signs and stores a checkpoint of (size, head) in tx."""
        signed_at = self._signed_at()
        try:
            key_id, signature = self._keys.current.sign(
                note(workspace_id, size, head, signed_at).encode()
            )
        except SigningKeysInvalid:
            raise SigningKeyUnavailable() from None
        record = await insert_checkpoint(
            tx,
            workspace_id=workspace_id,
            size=size,
            head=head,
            signed_at=signed_at,
            key_id=key_id,
            signature=signature,
            kind=kind,
        )
        self._metrics.checkpoints.labels(kind).inc()
        return record

    def _report(self, problems: list[Problem]) -> None:
        for problem in problems:
            self._metrics.verify_failures.labels(problem.what).inc()
            log.error(
                "chain verification failed; no checkpoint signed",
                extra={
                    "workspace_id": problem.workspace_id,
                    "seq": problem.seq,
                    "what": problem.what,
                    "detail": problem.detail,
                },
            )

    async def _verified_head(self, head: ChainHead, base: CheckpointRecord | None) -> None:
        problems = await verify_since(self._store, head, base, signature_ok=self.signature_ok())
        if problems:
            self._report(problems)
            raise ChainIntegrityError()

    async def checkpoint(self, workspace_id: str) -> CheckpointRecord:
        """The chain's latest checkpoint, or a new one if it has grown since (on demand)."""
        async with self._store.transaction() as tx:
            head = await tx.chain(workspace_id)
            base = await latest_checkpoint(tx, workspace_id)
        if head is None:
            head = ChainHead(workspace_id, 0, GENESIS_HASH, 0, GENESIS_HASH, None)
        if base is not None and (base.size, base.head) == (head.size, head.head):
            return base
        await self._verified_head(head, base)
        async with self._store.transaction() as tx:
            return await self.sign(tx, workspace_id, head.size, head.head, ON_DEMAND)

    async def sign_grown_chains(self) -> int:
        """One periodic pass: every chain that grew since its last checkpoint gets a new one
        (after its new part verified). Returns how many were signed."""
        async with self._store.transaction() as tx:
            heads = await tx.chains()
            signed_sizes = await checkpointed_sizes(tx)
        signed = 0
        for head in heads:
            if head.size <= signed_sizes.get(head.workspace_id, -1):
                continue
            try:
                async with self._store.transaction() as tx:
                    base = await latest_checkpoint(tx, head.workspace_id)
                await self._verified_head(head, base)
                async with self._store.transaction() as tx:
                    await self.sign(tx, head.workspace_id, head.size, head.head, PERIODIC)
                signed += 1
            except ChainIntegrityError:
                continue  # reported; the other chains still get theirs
        return signed

    async def _periodic_pass(self) -> None:
        await one_replica_at_a_time(self._store.engine, _PERIODIC_LOCK_KEY, self.sign_grown_chains)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._periodic_pass()
            except Exception:
                log.exception("periodic checkpoint pass failed; will retry")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with running_in_background(self.run(), name="palisade-audit-checkpoints"):
            yield
