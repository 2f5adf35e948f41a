"""The delivery queue in the service's database: claims with a lease, and settling an attempt.

A worker claims due deliveries in one short transaction: pending, due (next_attempt_at <= now),
no live lease (claimed_until NULL or past), of an enabled endpoint. Each claimed row gets the
claim's token in claimed_by, a lease end in claimed_until, and one more attempt counted. On
Postgres the read is SELECT ... FOR UPDATE SKIP LOCKED, so two workers claiming at the same
moment take disjoint rows without waiting; on SQLite every transaction begins IMMEDIATE
(palisade.common.db), which makes the claim a single-writer compare-and-set. The attempt then
runs with no transaction open, and is settled under `claimed_by = token`: if the lease ran out
meanwhile and another worker took the row (a new token), or the endpoint was deleted, the
settle matches nothing and the later claim's outcome is the one that counts. A worker that dies
mid-attempt leaves its lease to run out, and the row is attempted again: at least once.

The attempt count is taken at claim time, so an attempt that crashed still counts (a delivery
that crashes its worker every time ends as failed instead of looping), and its number is missing
from delivery_attempts, which records every attempt that finished.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.webhooks.catalogue import TEST_EVENT_TYPE
from palisade.webhooks.model import FAILED, PENDING, SUCCEEDED
from palisade.webhooks.tables import deliveries, delivery_attempts, endpoints

# How many due rows one claim looks at per row it may take: rows of endpoints already at their
# concurrency cap are passed over in favour of the next endpoint's.
_WINDOW_FACTOR = 4
# last_error of deliveries the claim gives up without an attempt.
EXHAUSTED = "attempts_exhausted"
UNSUBSCRIBED = "unsubscribed"


@dataclass(frozen=True)
class ClaimedDelivery:
    id: str
    endpoint_id: str
    workspace_id: str
    event_id: str
    event_type: str
    payload: bytes
    attempt: int  # this attempt's number, from 1
    round_attempt: int  # its number in the current round of the schedule (manual retries)
    token: str  # settle under it
    # When the round's first recorded attempt started; None for the round's first attempt.
    # Retry-After is capped on the total from here (delivery/schedule.py).
    round_started_at: datetime | None = None


@dataclass(frozen=True)
class Settlement:
    """What an attempt ended as. next_attempt_at None and state pending is not allowed."""

    state: str
    status: int  # 0: no HTTP answer
    error: str | None
    started_at: datetime
    duration_ms: int
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class QueueStats:
    depth: int
    oldest_created_at: datetime | None
    disabled_endpoints: int


def _insert_ignoring_duplicates(conn: AsyncConnection, table: Any) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def _streak_update(endpoint_id: str, outcomes: Sequence[tuple[bool, datetime]]) -> Any:
    """The endpoint's failure streak after these outcomes (succeeded?, when), in order: none
    if the last one succeeded; else it began at the first failure after the last success, or,
    with no success among them, where it already began (or at their first failure)."""
    e = endpoints
    successes = [i for i, (ok, _) in enumerate(outcomes) if ok]
    if successes and successes[-1] == len(outcomes) - 1:
        return (
            update(e)
            .where(e.c.id == endpoint_id, e.c.failing_since.is_not(None))
            .values(failing_since=None)
        )
    if successes:
        began = outcomes[successes[-1] + 1][1]
        return update(e).where(e.c.id == endpoint_id).values(failing_since=began)
    return (
        update(e)
        .where(e.c.id == endpoint_id, e.c.failing_since.is_(None))
        .values(failing_since=outcomes[0][1])
    )


class DeliveryStore:
    def __init__(self, *, engine: AsyncEngine, worker_id: str) -> None:
        self._engine = engine
        # claimed_by holds "<worker id>/<claim id>": who, and which claim.
        self._worker = worker_id[:31]

    async def claim(
        self,
        *,
        now: datetime,
        lease_seconds: float,
        limit: int,
        per_endpoint: int,
        busy: Mapping[str, int],
        per_workspace: int | None = None,
        busy_workspaces: Mapping[str, int] | None = None,
        max_attempts: int | None = None,
    ) -> list[ClaimedDelivery]:
        """Up to limit due deliveries, oldest due first: at most per_endpoint of one endpoint
        and per_workspace of one workspace, counting those the caller has in flight (busy,
        busy_workspaces).

        Given up in the same transaction instead of claimed (state failed, no attempt made):
        a delivery whose round already used max_attempts (attempts that crashed before they
        could settle: "attempts_exhausted"), and one of a type its endpoint no longer
        subscribes to ("unsubscribed"; webhook.test, sent to one endpoint on request, always
        goes)."""
        if limit < 1 or per_endpoint < 1:
            return []
        workspace_cap = per_workspace or limit
        in_flight = dict(busy_workspaces or {})
        saturated = [endpoint for endpoint, n in busy.items() if n >= per_endpoint]
        full = [ws for ws, n in in_flight.items() if n >= workspace_cap]
        d = deliveries
        a = delivery_attempts
        round_started = (
            select(func.min(a.c.started_at))
            .where(a.c.delivery_id == d.c.id, a.c.number > d.c.schedule_base)
            .correlate(d)
            .scalar_subquery()
        )
        query = (
            select(
                d.c.id,
                d.c.endpoint_id,
                d.c.workspace_id,
                d.c.event_id,
                d.c.event_type,
                d.c.payload,
                d.c.attempts,
                d.c.schedule_base,
                endpoints.c.event_types,
                round_started.label("round_started_at"),
            )
            .join(endpoints, endpoints.c.id == d.c.endpoint_id)
            .where(
                d.c.state == PENDING,
                d.c.next_attempt_at <= now,
                or_(d.c.claimed_until.is_(None), d.c.claimed_until < now),
                endpoints.c.enabled.is_(True),
            )
            .order_by(d.c.next_attempt_at, d.c.id)
            .limit(limit * _WINDOW_FACTOR)
        )
        if saturated:
            query = query.where(d.c.endpoint_id.not_in(saturated))
        if full:
            query = query.where(d.c.workspace_id.not_in(full))
        token = f"{self._worker}/{uuid.uuid4().hex}"
        async with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True, of=d)
            rows = (await conn.execute(query)).all()
            taken: dict[str, int] = dict(busy)
            picked = []
            given_up: dict[str, list[str]] = {EXHAUSTED: [], UNSUBSCRIBED: []}
            for row in rows:
                if max_attempts is not None and row.attempts - row.schedule_base >= max_attempts:
                    given_up[EXHAUSTED].append(row.id)
                    continue
                if row.event_type != TEST_EVENT_TYPE and row.event_type not in json.loads(
                    row.event_types
                ):
                    given_up[UNSUBSCRIBED].append(row.id)
                    continue
                if taken.get(row.endpoint_id, 0) >= per_endpoint:
                    continue
                if in_flight.get(row.workspace_id, 0) >= workspace_cap:
                    continue
                taken[row.endpoint_id] = taken.get(row.endpoint_id, 0) + 1
                in_flight[row.workspace_id] = in_flight.get(row.workspace_id, 0) + 1
                picked.append(row)
                if len(picked) == limit:
                    break
            for reason, ids in given_up.items():
                if ids:
                    await conn.execute(
                        update(d)
                        .where(d.c.id.in_(ids))
                        .values(state=FAILED, next_attempt_at=None, last_error=reason)
                    )
            if picked:
                await conn.execute(
                    update(d)
                    .where(d.c.id.in_([row.id for row in picked]))
                    .values(
                        attempts=d.c.attempts + 1,
                        claimed_by=token,
                        claimed_until=now + timedelta(seconds=lease_seconds),
                    )
                )
        return [
            ClaimedDelivery(
                id=row.id,
                endpoint_id=row.endpoint_id,
                workspace_id=row.workspace_id,
                event_id=row.event_id,
                event_type=row.event_type,
                payload=row.payload.encode("utf-8"),
                attempt=int(row.attempts) + 1,
                round_attempt=int(row.attempts) + 1 - int(row.schedule_base),
                token=token,
                round_started_at=row.round_started_at,
            )
            for row in picked
        ]

    async def settle(
        self, claimed: ClaimedDelivery, outcome: Settlement, *, now: datetime
    ) -> datetime | None:
        """settle_many() of one."""
        [since] = await self.settle_many([(claimed, outcome, now)])
        return since

    async def settle_many(
        self, items: Sequence[tuple[ClaimedDelivery, Settlement, datetime]]
    ) -> list[datetime | None]:
        """Records attempts and their outcomes, and the endpoints' failure streaks, in ONE
        transaction (a commit per delivery would cost more than the delivery; the worker
        groups the attempts that finished together). items: (claim, outcome, when it was
        settled), in the order the attempts finished. Returns, per item, when its endpoint's
        current streak of failures began (None after a success, or for an endpoint that is
        no longer enabled).

        A claim that was lost (its lease ran out and another worker took the row, a manual
        retry reset it, or the endpoint was deleted) changes nothing, but its attempt is still
        recorded if the delivery exists: it happened. Rows are written deliveries first, then
        endpoints, each in id order, so two workers' batches lock in the same order."""
        if not items:
            return []
        d, e = deliveries, endpoints
        async with self._engine.begin() as conn:
            attempts = []
            for claimed, outcome, _ in sorted(items, key=lambda item: item[0].id):
                held = await conn.execute(
                    update(d)
                    .where(d.c.id == claimed.id, d.c.claimed_by == claimed.token)
                    .values(
                        state=outcome.state,
                        next_attempt_at=outcome.next_attempt_at,
                        last_status=outcome.status or None,
                        last_error=outcome.error,
                        last_attempt_at=outcome.started_at,
                        claimed_by=None,
                        claimed_until=None,
                    )
                )
                if held.rowcount != 1:
                    found = await conn.execute(select(d.c.id).where(d.c.id == claimed.id))
                    if found.first() is None:
                        continue
                attempts.append(
                    {
                        "delivery_id": claimed.id,
                        "number": claimed.attempt,
                        "started_at": outcome.started_at,
                        "status": outcome.status or None,
                        "error": outcome.error,
                        "duration_ms": outcome.duration_ms,
                    }
                )
            if attempts:
                await conn.execute(_insert_ignoring_duplicates(conn, delivery_attempts), attempts)
            by_endpoint: dict[str, list[tuple[bool, datetime]]] = {}
            for claimed, outcome, when in items:
                by_endpoint.setdefault(claimed.endpoint_id, []).append(
                    (outcome.state == SUCCEEDED, when)
                )
            failing: list[str] = []
            for endpoint_id in sorted(by_endpoint):
                await conn.execute(_streak_update(endpoint_id, by_endpoint[endpoint_id]))
                if not by_endpoint[endpoint_id][-1][0]:
                    failing.append(endpoint_id)
            since: dict[str, datetime] = {}
            if failing:
                rows = await conn.execute(
                    select(e.c.id, e.c.failing_since).where(
                        e.c.id.in_(failing), e.c.enabled.is_(True)
                    )
                )
                since = {
                    r.id: r.failing_since for r in rows if isinstance(r.failing_since, datetime)
                }
        return [
            None if outcome.state == SUCCEEDED else since.get(claimed.endpoint_id)
            for claimed, outcome, _ in items
        ]

    async def release(self, claimed: ClaimedDelivery, *, retry_at: datetime | None = None) -> None:
        """Gives a claimed row back with its attempt uncounted, because none was made: the
        endpoint had no target, or its secrets could not be opened (crypto away). retry_at:
        not claimed again before then (None: as it was)."""
        d = deliveries
        values: dict[str, Any] = {
            "attempts": d.c.attempts - 1,
            "claimed_by": None,
            "claimed_until": None,
        }
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        async with self._engine.begin() as conn:
            await conn.execute(
                update(d)
                .where(d.c.id == claimed.id, d.c.claimed_by == claimed.token)
                .values(values)
            )

    async def stats(self) -> QueueStats:
        d, e = deliveries, endpoints
        async with self._engine.connect() as conn:
            depth, oldest = (
                await conn.execute(
                    select(func.count(), func.min(d.c.created_at))
                    .select_from(d.join(e, e.c.id == d.c.endpoint_id))
                    .where(and_(d.c.state == PENDING, e.c.enabled.is_(True)))
                )
            ).one()
            disabled = (
                await conn.execute(
                    select(func.count()).select_from(e).where(e.c.enabled.is_(False))
                )
            ).scalar_one()
        oldest_at = oldest if isinstance(oldest, datetime) else None
        return QueueStats(
            depth=int(depth), oldest_created_at=oldest_at, disabled_endpoints=int(disabled)
        )
