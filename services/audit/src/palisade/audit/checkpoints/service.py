"""Signing checkpoints: on demand (GetCheckpoint), periodically, and at a retention purge.

A checkpoint says "this chain's first <size> events end in <head>", signed with the current
Ed25519 key. Before signing, the part of the chain added since the last checkpoint is verified
(hashes, links, positions, and the retention anchor it starts from): a signature must never
vouch for rows someone changed in the database meanwhile. The chain-head row is read first and
the checkpoint covers exactly what was verified, so appends running at the same time neither
wait nor are covered half. Every checkpoint signed is also appended to the witness file, once
its transaction committed (palisade.audit.checkpoints.witness).

The purge job alone signs retention anchors (sign_anchor), a note of their own: where it cut a
chain. Nothing else in the service signs one, so an ordinary checkpoint cannot stand in for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime

from palisade.audit.chain.verify import CHECKPOINT_MISMATCH, Problem, checkpoint_label
from palisade.audit.chain.walk import SignatureChecks, signature_checks, verify_since
from palisade.audit.checkpoints.notes import anchor_note, note
from palisade.audit.checkpoints.records import (
    checkpointed_sizes,
    insert_anchor,
    insert_checkpoint,
    latest_checkpoint,
)
from palisade.audit.checkpoints.signing_keys import SigningKeyHolder, SigningKeysInvalid
from palisade.audit.checkpoints.witness import WitnessFile
from palisade.audit.errors import ChainIntegrityError, SigningKeyUnavailable
from palisade.audit.metrics import AuditMetrics
from palisade.audit.model import GENESIS_HASH, AnchorRecord, ChainHead, CheckpointRecord
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
        witness: WitnessFile | None,
    ) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        self._metrics = metrics
        self._interval = interval_seconds
        self._witness = witness

    def signatures(self) -> SignatureChecks:
        return signature_checks(self._keys.current.verify)

    def _signed_at(self) -> datetime:
        return self._clock.now().replace(microsecond=0)

    def _sign_note(self, text: str) -> tuple[str, bytes]:
        try:
            return self._keys.current.sign(text.encode())
        except SigningKeysInvalid:
            raise SigningKeyUnavailable() from None

    async def witnessed(self, record: CheckpointRecord) -> CheckpointRecord:
        """Appends a checkpoint whose transaction committed to the witness file."""
        if self._witness is not None:
            await self._witness.record(record)
        return record

    async def sign(
        self, tx: AuditTransaction, workspace_id: str, size: int, head: bytes, kind: str
    ) -> CheckpointRecord:
        """Signs and stores a checkpoint of (size, head) in tx (witnessed() once it commits)."""
        signed_at = self._signed_at()
        key_id, signature = self._sign_note(note(workspace_id, size, head, signed_at))
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

    async def sign_anchor(
        self, tx: AuditTransaction, workspace_id: str, size: int, head: bytes
    ) -> AnchorRecord:
        """Signs and stores, in tx, the retention anchor of a purge that deletes the chain's
        first size events (ending in head) in the same transaction. Only the purge job calls
        this."""
        purged_at = self._signed_at()
        key_id, signature = self._sign_note(anchor_note(workspace_id, size, head, purged_at))
        return await insert_anchor(
            tx,
            workspace_id=workspace_id,
            size=size,
            head=head,
            purged_at=purged_at,
            key_id=key_id,
            signature=signature,
        )

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

    async def witness_problems(self, workspace_id: str) -> list[Problem]:
        """Whether the chain still holds its latest witnessed checkpoint (the same head at its
        size; one below the chain's anchor was purged with the events). A chain that does not
        was cut and perhaps grown again: nothing is signed over it, so the witness keeps the
        evidence (palisade.audit.checkpoints.witness). The chain is read afresh: another
        replica may have signed a larger checkpoint since the caller read its head."""
        if self._witness is None:
            return []
        witnessed = await self._witness.latest(workspace_id)
        if witnessed is None:
            return []
        async with self._store.transaction() as tx:
            chain = await tx.chain(workspace_id)
            held = await tx.hash_at(workspace_id, witnessed.size)
        anchor_size, anchor_head = (
            (chain.anchor_size, chain.anchor_head) if chain else (0, GENESIS_HASH)
        )
        if witnessed.size < anchor_size:
            return []
        if witnessed.size == anchor_size:
            held = anchor_head
        if held == witnessed.head:
            return []
        detail = f"{checkpoint_label(witnessed)} no longer matches the chain"
        return [Problem(workspace_id, witnessed.size, CHECKPOINT_MISMATCH, detail)]

    async def _verified_head(self, head: ChainHead, base: CheckpointRecord | None) -> None:
        problems = await self.witness_problems(head.workspace_id)
        problems += await verify_since(self._store, head, base, signatures=self.signatures())
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
            record = await self.sign(tx, workspace_id, head.size, head.head, ON_DEMAND)
        return await self.witnessed(record)

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
                    record = await self.sign(tx, head.workspace_id, head.size, head.head, PERIODIC)
                await self.witnessed(record)
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
