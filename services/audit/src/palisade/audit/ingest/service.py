"""Storing a validated batch: deduplicate, check workspaces, encrypt PII, append to chains.

Everything that can fail for reasons outside the database (an unknown workspace, auth or crypto
unreachable) is settled before the transaction starts, so a refused or failed batch stores
nothing and no chain-head lock is held across a network call. The transaction then drops the
events already stored (under the chain locks, so a batch that held them just before is seen),
appends each workspace's events in batch order, after whatever the chain held, and moves its
head. A retried batch is encrypted again (cheap) rather than looked up first (a round trip
every batch pays).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from sqlalchemy.exc import DBAPIError

from palisade.audit.errors import UnknownWorkspace
from palisade.audit.ingest.directory import WorkspaceDirectory
from palisade.audit.ingest.rows import BatchEncoder, Moment, PreparedEvent
from palisade.audit.metrics import AuditMetrics
from palisade.audit.model import SYSTEM_CHAIN, NewEvent, SealedEvent, StoredEvent
from palisade.audit.pii import PiiVault, SealedPii
from palisade.audit.store import AppendConflict, AuditStore, AuditTransaction, NewRow
from palisade.common.clock import Clock
from palisade.common.db import transaction_conflict

log = logging.getLogger("palisade.audit.ingest")

# A batch that lost a race (another batch stored one of its event ids into another workspace's
# chain at the same moment, or Postgres broke a lock cycle) is run again from the start.
_ATTEMPTS = 3
# The fields two versions of one event id are compared by (the PII fields are ciphertexts).
_COMPARED = ("type", "occurred_at", "workspace_id", "actor", "subject", "outcome", "reason")


@dataclass(frozen=True)
class IngestResult:
    stored: int
    duplicates: int


def _unique(events: Sequence[NewEvent]) -> tuple[list[NewEvent], list[NewEvent]]:
    """(first occurrence of each event id, the later ones)."""
    seen: set[str] = set()
    first: list[NewEvent] = []
    again: list[NewEvent] = []
    for event in events:
        (again if event.event_id in seen else first).append(event)
        seen.add(event.event_id)
    return first, again


def _differences(new: NewEvent, stored: SealedEvent) -> list[str]:
    differ = [f for f in _COMPARED if getattr(new, f) != getattr(stored, f)]
    if new.details != stored.details:
        differ.append("details")
    device = (new.device.browser, new.device.os, new.device.kind)
    if device != (stored.device_browser, stored.device_os, stored.device_kind):
        differ.append("device")
    return differ


def _new_differences(new: NewEvent, first: NewEvent) -> list[str]:
    return [
        name
        for name in NewEvent._fields
        if name != "batch_index" and getattr(new, name) != getattr(first, name)
    ]


class Ingestor:
    def __init__(
        self,
        *,
        store: AuditStore,
        directory: WorkspaceDirectory,
        vault: PiiVault,
        clock: Clock,
        metrics: AuditMetrics,
        on_stored: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._directory = directory
        self._vault = vault
        self._clock = clock
        self._metrics = metrics
        self._on_stored = on_stored

    async def ingest(self, source: str, events: Sequence[NewEvent]) -> IngestResult:
        started = time.perf_counter()
        unique, repeated = _unique(events)
        self._log_repeats(source, unique, repeated)
        await self._require_workspaces(unique)
        sealed = await self._vault.seal(unique)
        stored, already = await self._append(source, unique, sealed)
        if already:
            await self._log_changed_duplicates(source, [e for e in unique if e.event_id in already])
        duplicates = len(events) - len(stored)
        for event_type, count in Counter(e.type for e in stored).items():
            self._metrics.ingested.labels(event_type, source).inc(count)
        if duplicates:
            self._metrics.duplicates.labels(source).inc(duplicates)
        self._metrics.ingest_seconds.observe(time.perf_counter() - started)
        if stored:
            self._on_stored()
        return IngestResult(stored=len(stored), duplicates=duplicates)

    async def _require_workspaces(self, events: Sequence[NewEvent]) -> None:
        wanted = {e.workspace_id for e in events if e.workspace_id != SYSTEM_CHAIN}
        if not wanted:
            return
        known = await self._directory.existing(wanted)
        for event in events:
            if event.workspace_id != SYSTEM_CHAIN and event.workspace_id not in known:
                raise UnknownWorkspace(event.batch_index)

    async def _append(
        self, source: str, events: Sequence[NewEvent], sealed: Sequence[SealedPii]
    ) -> tuple[list[NewEvent], set[str]]:
        """(the events appended, the ids found stored already).

        The first attempt does not look for stored ids: the unique index on event_id is the
        judge, and a batch holding none (nearly every one) is spared a lookup per event. A batch
        it refuses (a retry, or another batch storing one of these ids into another chain at the
        same moment) is appended again, leaving out what is stored."""
        encoder = BatchEncoder(source)
        # Before any lock: everything but each event's place in its chain.
        prepared = [encoder.prepare(e, p) for e, p in zip(events, sealed, strict=True)]
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                async with self._store.transaction() as tx:
                    return await self._append_in(tx, encoder, prepared, look=attempt > 1)
            except AppendConflict:
                if attempt == _ATTEMPTS:
                    raise
                log.debug("an event id is stored already; appending the others")
            except (DBAPIError, psycopg.Error) as error:
                if attempt == _ATTEMPTS or not transaction_conflict(error):
                    raise
                log.info("append rolled back by a conflict; appending again")
        raise AssertionError("not reached")

    async def _append_in(
        self,
        tx: AuditTransaction,
        encoder: BatchEncoder,
        prepared: Sequence[PreparedEvent],
        *,
        look: bool,
    ) -> tuple[list[NewEvent], set[str]]:
        if not prepared:
            return [], set()
        heads = await tx.lock_chains({p.event.workspace_id for p in prepared})
        # Under the chain locks: a batch that held them before us may have stored some of ours.
        already = (
            await tx.existing_event_ids([p.event.event_id for p in prepared]) if look else set()
        )
        recorded = Moment.of(self._clock.now())
        position = {w: (h.size, h.head) for w, h in heads.items()}
        rows: list[NewRow] = []
        appended: list[NewEvent] = []
        link = encoder.link
        for item in prepared:
            event = item.event
            if already and event.event_id in already:
                continue
            size, head = position[event.workspace_id]
            digest, row = link(item, size + 1, head, recorded)
            position[event.workspace_id] = (size + 1, digest)
            rows.append(row)
            appended.append(event)
        await tx.append(rows)
        await tx.move_heads(
            (w, size, head)
            for w, (size, head) in position.items()
            if (size, head) != (heads[w].size, heads[w].head)
        )
        return appended, already

    def _log_repeats(
        self, source: str, unique: Sequence[NewEvent], repeated: Sequence[NewEvent]
    ) -> None:
        if not repeated:
            return
        first = {e.event_id: e for e in unique}
        for event in repeated:
            differ = _new_differences(event, first[event.event_id])
            if differ:
                log.warning(
                    "an event id came twice in one batch with different content; the first stands",
                    extra={"event_id": event.event_id, "source": source, "fields": differ},
                )

    async def _log_changed_duplicates(self, source: str, events: Sequence[NewEvent]) -> None:
        async with self._store.transaction() as tx:
            stored: dict[str, StoredEvent] = await tx.stored_versions([e.event_id for e in events])
        for event in events:
            found = stored.get(event.event_id)
            differ = _differences(event, found.sealed) if found is not None else []
            if differ:
                # Field names only: the values may be PII.
                log.warning(
                    "an event id was sent again with different content; the stored one stands",
                    extra={"event_id": event.event_id, "source": source, "fields": differ},
                )
