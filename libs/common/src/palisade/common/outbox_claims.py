"""Claiming an outbox's due rows with a lease, so that replicas share the work, never double it.

A relay that delivers rows one at a time (auth's mail relay and key revocation relay, apikeys'
notice relay) first *claims* a batch in one short transaction: it reads the due rows in its
order, counts an attempt on each and moves each row's next attempt one lease ahead, so that no
other relay takes them until the lease has run out. On Postgres the read is SELECT ... FOR
UPDATE SKIP LOCKED: replicas claiming at the same moment take disjoint rows without waiting
for one another. On SQLite the engine begins every transaction IMMEDIATE (palisade.common.db),
which makes the claim exclusive.

The relay then delivers with no transaction open (a slow peer must hold no locks) and settles
each row under held(): if its lease ran out meanwhile and another relay claimed the row
again, that relay's attempt number no longer matches and its outcome is the one that counts.
If a relay dies mid-batch, its lease runs out and the rows are claimed again: delivery is at
least once.

The table needs an id, an integer count of attempts and a next-attempt time (NULL meaning
"due now" where the table allows it); which rows are still pending and in what order they go
is the caller's to say.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, Table, and_, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncEngine


def exponential_backoff(attempts: int, *, first_seconds: float, max_seconds: float) -> timedelta:
    """The wait after the `attempts`-th failed attempt: first, twice that, ... at most max."""
    exponent = min(max(attempts - 1, 0), 30)  # 2**30 times any first wait passes any cap
    return timedelta(seconds=min(first_seconds * 2**exponent, max_seconds))


@dataclass(frozen=True)
class Claim:
    """One row a relay now holds, until its lease ends."""

    id: Any
    attempt: int  # this attempt's number, from 1
    row: Row[tuple[Any, ...]] = field(repr=False)  # the columns the outbox reads


@dataclass(frozen=True)
class ClaimedBatch:
    claims: list[Claim]
    # Rows the claim settled at once instead (give_up): their ids, in claim order.
    given_up: list[Any]


class LeasedOutbox:
    """How one outbox table is claimed; see the module docstring."""

    def __init__(
        self,
        table: Table,
        *,
        columns: Sequence[ColumnElement[Any]],
        order_by: Sequence[ColumnElement[Any]],
        pending: ColumnElement[bool] | None = None,
        due_when_unset: bool = False,
        id_column: str = "id",
        attempts_column: str = "attempts",
        next_attempt_column: str = "next_attempt_at",
    ) -> None:
        """columns: what a claim reads for the relay (the id and attempts are read anyway).
        order_by: the order due rows are claimed in; end it with a unique column.
        pending: the rows still to deliver (None: every row; delivered rows are deleted).
        due_when_unset: a NULL next-attempt time means due now."""
        self._table = table
        self._columns = tuple(columns)
        self._order_by = tuple(order_by)
        self._pending = pending if pending is not None else true()
        self._due_when_unset = due_when_unset
        self._id = table.c[id_column]
        self._attempts = table.c[attempts_column]
        self._next_attempt = table.c[next_attempt_column]

    @property
    def table(self) -> Table:
        return self._table

    def due(self, now: datetime) -> ColumnElement[bool]:
        """Pending rows whose next attempt (or lease end) is not after now."""
        reached = self._next_attempt <= now
        if self._due_when_unset:
            reached = or_(self._next_attempt.is_(None), reached)
        return and_(self._pending, reached)

    def held(self, row_id: Any, attempt: int) -> ColumnElement[bool]:
        """The row claimed for that attempt, if no later claim has taken it since: settle
        claimed rows under this."""
        return and_(self._id == row_id, self._attempts == attempt)

    async def claim(
        self,
        engine: AsyncEngine,
        *,
        now: datetime,
        lease_end: datetime,
        limit: int,
        give_up: Callable[[Row[tuple[Any, ...]]], bool] | None = None,
        give_up_values: Mapping[str, Any] | None = None,
    ) -> ClaimedBatch:
        """Claims up to limit due rows until lease_end, in order.

        give_up: picks out claimed rows not worth an attempt (out of attempts, say); they are
        updated with give_up_values in the same transaction instead of being leased."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = (
            select(self._id, self._attempts, *self._columns)
            .where(self.due(now))
            .order_by(*self._order_by)
            .limit(limit)
        )
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = (await conn.execute(query)).all()
            spent: list[Row[tuple[Any, ...]]] = []
            kept: list[Row[tuple[Any, ...]]] = []
            for read in rows:
                (spent if give_up is not None and give_up(read) else kept).append(read)
            if spent:
                await conn.execute(
                    update(self._table)
                    .where(self._id.in_([row._mapping[self._id] for row in spent]))
                    .values(dict(give_up_values or {}))
                )
            if kept:
                await conn.execute(
                    update(self._table)
                    .where(self._id.in_([row._mapping[self._id] for row in kept]))
                    .values({self._attempts: self._attempts + 1, self._next_attempt: lease_end})
                )
        return ClaimedBatch(
            claims=[
                Claim(
                    id=row._mapping[self._id],
                    attempt=int(row._mapping[self._attempts]) + 1,
                    row=row,
                )
                for row in kept
            ],
            given_up=[row._mapping[self._id] for row in spent],
        )
