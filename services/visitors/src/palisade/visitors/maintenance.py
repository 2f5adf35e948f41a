"""Key rotation on real rows: the rewrap job (data keys) and the reindex (index keys).

Rewrap moves every visitor whose envelopes are under an older data key version to the primary
with crypto's Rewrap, which re-encrypts inside crypto: this service never sees the plaintext.
It walks rows in id order, a batch per call, persisting where it stopped (maintenance_cursors)
after every batch, so a restart carries on from there; a new primary starts a new walk. It is
paced to rows_per_second, so a large table does not starve live traffic of crypto. A row
updated meanwhile (erased, or moved by another replica) is left as it now is: the update is
conditional on the row being as it was read. A row whose subject was shredded before its
clearing committed (an interrupted erasure) has its erasure finished here.

Reindex recomputes blind-index tokens under the primary index key. Tokens are HMACs of the
normalized plaintext, so this needs the plaintext: one Decrypt and one BlindIndex per batch,
then crypto is told which index versions rows still use (ReportIndexVersions), which is what
`palisade-crypto keys retire --index` checks. Likewise each full rewrap walk (the background job
or `palisade-visitors rewrap`) ends by reporting the data key versions rows still use
(ReportDataVersions), which `palisade-crypto keys retire --below N` checks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from palisade.common.clock import Clock
from palisade.common.crypto_client import (
    CryptoClient,
    CryptoFailure,
    IndexInput,
    Normalization,
    SubjectErased,
)
from palisade.common.errors import PalisadeError, Unavailable
from palisade.common.tasks import running_in_background
from palisade.visitors.erasure import Erasures
from palisade.visitors.metrics import VisitorsMetrics
from palisade.visitors.model import StoredVisitor
from palisade.visitors.normalize import stored_email_lookup
from palisade.visitors.pii import FIELDS, Field, IndexedField, field_aad, index_context
from palisade.visitors.store import VisitorStore

log = logging.getLogger("palisade.visitors.maintenance")

REWRAP_JOB = "rewrap"
REINDEX_JOB = "reindex"


@dataclass(frozen=True)
class PassResult:
    moved: int  # rows rewrapped (or reindexed)
    erased: int  # interrupted erasures finished on the way
    failed: int  # rows left in place (logged by id)
    target_version: int


class Pacer:
    """Keeps a job at or under rows_per_second (sleep injectable: tests never wait)."""

    def __init__(
        self,
        rows_per_second: float,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rows_per_second
        self._sleep = sleep
        self._monotonic = monotonic
        self._started = monotonic()
        self._rows = 0

    async def done(self, rows: int) -> None:
        self._rows += rows
        ahead = self._rows / self._rate - (self._monotonic() - self._started)
        if ahead > 0:
            await self._sleep(ahead)


class KeyMaintenance:
    def __init__(
        self,
        *,
        store: VisitorStore,
        crypto: CryptoClient,
        clock: Clock,
        metrics: VisitorsMetrics,
        batch_rows: int,
        rows_per_second: float,
        poll_seconds: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._clock = clock
        self._metrics = metrics
        self._batch = batch_rows
        self._rate = rows_per_second
        self._poll = poll_seconds
        self._sleep = sleep
        self._erasures = Erasures(store=store, crypto=crypto, clock=clock)

    async def refresh_metrics(self) -> dict[int, int]:
        counts = await self._store.rows_per_data_version()
        self._metrics.set_rows_by_version(counts)
        return counts

    # -- rewrap -------------------------------------------------------------------------------

    async def rewrap(self) -> PassResult:
        """Moves every row below the primary data key version to it; returns once none is left
        (but those that failed, which are logged and counted)."""
        target = (await self._crypto.key_versions()).primary_data
        pacer = Pacer(self._rate, sleep=self._sleep)
        moved = erased = failed = 0
        after = await self._store.cursor(REWRAP_JOB, target)
        while rows := await self._store.below_data_version(target, after=after, limit=self._batch):
            m, e, f = await self._rewrap_rows(rows)
            moved, erased, failed = moved + m, erased + e, failed + f
            after = rows[-1].id
            await self._store.save_cursor(REWRAP_JOB, target, after, self._clock.now())
            self._metrics.rows_rewrapped.inc(m)
            await pacer.done(len(rows))
        # The walk is over: the next one (a row a stale replica wrote, a failed one) starts over.
        await self._store.save_cursor(REWRAP_JOB, target, "", self._clock.now())
        counts = await self.refresh_metrics()
        # What `palisade-crypto keys retire --below N` checks: the versions rows still use
        # (failed rows included: retiring theirs would make them unreadable for good).
        await self._crypto.report_data_versions(sorted(counts))
        return PassResult(moved, erased, failed, target)

    async def _rewrap_rows(self, rows: list[StoredVisitor]) -> tuple[int, int, int]:
        """(moved, erased, failed). A batch crypto refuses is retried row by row to find the
        rows at fault; a row alone in its batch (the last of a walk, or every one with a batch of
        1) is settled at once the same way, so one unreadable row never aborts the walk."""
        try:
            return await self._rewrap_batch(rows), 0, 0
        except Unavailable:
            raise
        except PalisadeError as exc:
            if len(rows) == 1:
                erased, failed = await self._settle(rows[0], exc)
                return 0, erased, failed
        moved = erased = failed = 0
        for row in rows:
            try:
                moved += await self._rewrap_batch([row])
            except Unavailable:
                raise
            except PalisadeError as exc:
                e, f = await self._settle(row, exc)
                erased, failed = erased + e, failed + f
        return moved, erased, failed

    async def _settle(self, row: StoredVisitor, refused: PalisadeError) -> tuple[int, int]:
        """(erased, failed) for a row crypto would not rewrap: an interrupted erasure is
        finished; anything else (a tampered envelope) is counted, logged by id and left."""
        if isinstance(refused, SubjectErased):
            try:
                return await self._erasures.finish_interrupted(row), 0
            except CryptoFailure:
                # An erased subject's envelope in a live row: logged there.
                self._metrics.rewrap_failures.inc()
                return 0, 1
        self._metrics.rewrap_failures.inc()
        log.error(
            "a visitor's envelopes could not be rewrapped; left in place",
            extra={"visitor_id": row.id, "reason": refused.code},
        )
        return 0, 1

    async def _rewrap_batch(self, rows: list[StoredVisitor]) -> int:
        items: list[tuple[bytes, bytes]] = []
        places: list[tuple[int, Field]] = []
        for n, row in enumerate(rows):
            for f in FIELDS:
                envelope = getattr(row, f"{f}_ct")
                if envelope is not None:
                    items.append((envelope, field_aad(row.workspace_id, row.id, f)))
                    places.append((n, f))
        reply = await self._crypto.rewrap(items)
        envelopes: list[dict[str, bytes | None]] = [{} for _ in rows]
        for (n, f), envelope in zip(places, reply.ciphertexts, strict=True):
            envelopes[n][f"{f}_ct"] = envelope
        moved = 0
        for row, new in zip(rows, envelopes, strict=True):
            moved += await self._store.replace_envelopes(row, new, reply.key_version)
        return moved

    # -- reindex ------------------------------------------------------------------------------

    async def reindex(self) -> PassResult:
        """Recomputes the tokens of every row below the primary index key version, then reports
        the versions still in use to crypto."""
        target = (await self._crypto.key_versions()).primary_index
        pacer = Pacer(self._rate, sleep=self._sleep)
        moved = erased = failed = 0
        after = await self._store.cursor(REINDEX_JOB, target)
        while rows := await self._store.below_index_version(target, after=after, limit=self._batch):
            m, e, f = await self._reindex_rows(rows)
            moved, erased, failed = moved + m, erased + e, failed + f
            after = rows[-1].id
            await self._store.save_cursor(REINDEX_JOB, target, after, self._clock.now())
            self._metrics.rows_reindexed.inc(m)
            await pacer.done(len(rows))
        await self._store.save_cursor(REINDEX_JOB, target, "", self._clock.now())
        await self._crypto.report_index_versions(await self._store.index_versions_in_use())
        return PassResult(moved, erased, failed, target)

    async def _reindex_rows(self, rows: list[StoredVisitor]) -> tuple[int, int, int]:
        items: list[tuple[bytes, bytes]] = []
        places: list[tuple[int, IndexedField]] = []
        for n, row in enumerate(rows):
            pairs: tuple[tuple[IndexedField, bytes | None], ...] = (
                ("email", row.email_ct),
                ("phone", row.phone_ct),
            )
            for f, envelope in pairs:
                if envelope is not None:
                    items.append((envelope, field_aad(row.workspace_id, row.id, f)))
                    places.append((n, f))
        plaintexts = await self._crypto.decrypt(items, tolerate_erased=True)
        inputs: list[IndexInput] = []
        where: list[tuple[int, IndexedField]] = []
        skipped: set[int] = set()
        for (n, f), plain in zip(places, plaintexts, strict=True):
            if plain is None:
                skipped.add(n)  # an interrupted erasure (or a planted envelope): below
                continue
            text = plain.decode()
            ws = rows[n].workspace_id
            if f == "email":
                inputs.append(
                    IndexInput(
                        stored_email_lookup(text), Normalization.EMAIL, index_context(ws, "email")
                    )
                )
            else:
                inputs.append(IndexInput(text, Normalization.PHONE, index_context(ws, "phone")))
            where.append((n, f))
        tokens = await self._crypto.index_tokens(inputs)
        new: list[dict[str, str | None]] = [{} for _ in rows]
        versions: list[int] = [0] * len(rows)
        for (n, field), (version, token) in zip(where, tokens, strict=True):
            new[n][f"{field}_index"] = token
            versions[n] = version
        moved = erased = failed = 0
        for n, row in enumerate(rows):
            if n not in skipped and new[n]:
                moved += await self._store.replace_tokens(row, new[n], versions[n])
        for n in sorted(skipped):
            # Finishing the erasure clears the old tokens too, so retiring the index version is
            # not held up by a visitor no one reads again.
            try:
                erased += await self._erasures.finish_interrupted(rows[n])
            except CryptoFailure:
                failed += 1
        return moved, erased, failed

    # -- in the background --------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                result = await self.rewrap()
                if result.moved or result.erased:
                    log.info(
                        "rewrap pass done",
                        extra={"rows": result.moved, "key_version": result.target_version},
                    )
            except Unavailable:
                log.warning("rewrap pass put off: crypto is unavailable")
            except Exception:
                log.exception("rewrap pass failed; will retry")
            await self._sleep(self._poll)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with running_in_background(self.run(), name="palisade-visitors-rewrap"):
            yield
