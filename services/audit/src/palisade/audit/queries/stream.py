"""The event stream for services (webhook delivery): every event, in storage order, resumable.

Storage order is (tx_order, id). On Postgres ids are handed out at insert but become visible at
commit, so a later id can be seen before an earlier one; a reader that moved past the later
one would never see the earlier. tx_order is the inserting transaction's id, and the stream
only hands out rows of transactions older than every transaction still running
(pg_snapshot_xmin): no row can ever appear behind a position already handed out. SQLite has one
writer at a time, so ids already appear in order there (tx_order is 0).

Events this replica stores wake its subscribers at once (StreamNotifier); events stored by
other replicas are found by polling every stream_poll_seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, literal_column, or_, select

from palisade.audit.errors import InvalidCursor
from palisade.audit.model import StoredEvent
from palisade.audit.pii import NO_PII, PiiVault, RevealedPii
from palisade.audit.store import EVENT_COLUMNS, AuditStore, stored_event
from palisade.audit.tables import events

_CURSOR = re.compile(r"(0|[1-9][0-9]{0,18})\.(0|[1-9][0-9]{0,18})")
_MAX = 2**63 - 1
# On Postgres: the oldest transaction still running; rows of younger ones are held back.
_HORIZON: ColumnElement[int] = literal_column(
    "(pg_snapshot_xmin(pg_current_snapshot())::text)::bigint"
)


@dataclass(frozen=True, order=True)
class Position:
    tx_order: int
    id: int

    def cursor(self) -> str:
        return f"{self.tx_order}.{self.id}"


BEGINNING = Position(0, 0)


def parse_cursor(text: str) -> Position | None:
    """The position after which to resume; None for "from now on" (empty)."""
    if not text:
        return None
    if text == "0":
        return BEGINNING
    match = _CURSOR.fullmatch(text)
    if match is None:
        raise InvalidCursor()
    tx_order, position = int(match.group(1)), int(match.group(2))
    if tx_order > _MAX or position > _MAX:
        raise InvalidCursor()
    return Position(tx_order, position)


class StreamNotifier:
    """Wakes this replica's subscribers when it has stored events."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def notify(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    @contextlib.contextmanager
    def subscription(self) -> Iterator[asyncio.Event]:
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)


@dataclass(frozen=True)
class StreamedEvent:
    position: Position
    stored: StoredEvent
    pii: RevealedPii


class EventStream:
    def __init__(
        self,
        *,
        store: AuditStore,
        vault: PiiVault,
        notifier: StreamNotifier,
        batch_events: int,
        poll_seconds: float,
    ) -> None:
        self._store = store
        self._vault = vault
        self._notifier = notifier
        self._batch = batch_events
        self._poll = poll_seconds

    def _final(self) -> list[ColumnElement[bool]]:
        if self._store.engine.dialect.name == "postgresql":
            return [events.c.tx_order < _HORIZON]
        return []

    async def head(self) -> Position:
        """The position of the last event that is final now."""
        query = (
            select(events.c.tx_order, events.c.id)
            .where(*self._final())
            .order_by(events.c.tx_order.desc(), events.c.id.desc())
            .limit(1)
        )
        async with self._store.transaction() as tx:
            row = (await tx.conn.execute(query)).first()
        return Position(int(row[0]), int(row[1])) if row is not None else BEGINNING

    async def batch_after(self, after: Position) -> list[tuple[Position, StoredEvent]]:
        later = or_(
            events.c.tx_order > after.tx_order,
            and_(events.c.tx_order == after.tx_order, events.c.id > after.id),
        )
        query = (
            select(events.c.tx_order, *EVENT_COLUMNS)
            .where(later, *self._final())
            .order_by(events.c.tx_order, events.c.id)
            .limit(self._batch)
        )
        async with self._store.transaction() as tx:
            rows = list(await tx.conn.execute(query))
        found = []
        for row in rows:
            event = stored_event(row[1:])
            found.append((Position(int(row[0]), event.position), event))
        return found

    async def follow(
        self, after: Position, *, include_pii: bool
    ) -> AsyncIterator[list[StreamedEvent]]:
        """Batches of events after the position (head(): from now on), forever."""
        with self._notifier.subscription() as woken:
            position = after
            while True:
                woken.clear()
                found = await self.batch_after(position)
                if found:
                    stored = [e for _, e in found]
                    revealed = (
                        await self._vault.reveal([e.sealed for e in stored])
                        if include_pii
                        else [NO_PII] * len(stored)
                    )
                    yield [
                        StreamedEvent(p, e, r) for (p, e), r in zip(found, revealed, strict=True)
                    ]
                    position = found[-1][0]
                    if len(found) == self._batch:
                        continue  # more waiting: no pause
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), self._poll)
