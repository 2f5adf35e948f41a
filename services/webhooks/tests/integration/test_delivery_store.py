"""The delivery store's group settle: several outcomes in one transaction, the failure streak
as if they had been settled one by one, lost claims changing nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from palisade.webhooks.delivery.store import DeliveryStore, Settlement

from .conftest import new_workspace
from .delivery_support import (
    LOCAL_NETWORKS,
    attempts_of,
    delivery_of,
    endpoint_row,
    queue_events,
    streamed,
)

LOGIN = "session.login_succeeded"


@pytest.fixture
async def local(webhooks_factory: Any, database_url: str) -> AsyncIterator[Any]:
    async with webhooks_factory(database_url, allowed_networks=LOCAL_NETWORKS) as running:
        yield running


def _outcome(harness: Any, state: str, status: int) -> Settlement:
    retry = harness.clock.now() + timedelta(seconds=5) if state == "pending" else None
    return Settlement(
        state=state,
        status=status,
        error=None,
        started_at=harness.clock.now(),
        duration_ms=3,
        next_attempt_at=retry,
    )


async def _claims(harness: Any, store: DeliveryStore, count: int) -> list[Any]:
    ws = new_workspace()
    created = await harness.create(ws, url="http://127.0.0.1:9/hook", event_types=(LOGIN,))
    await queue_events(harness, *(streamed(workspace=ws) for _ in range(count)))
    claims = await store.claim(
        now=harness.clock.now(), lease_seconds=60, limit=count, per_endpoint=count, busy={}
    )
    assert len(claims) == count
    return [created.webhook.id, *claims]


async def test_the_streak_follows_the_order_the_attempts_finished(local) -> None:
    store = DeliveryStore(engine=local.server.engine, worker_id="w")
    endpoint, first, second, third = await _claims(local, store, 3)
    t0 = local.clock.now()
    fail, ok = _outcome(local, "pending", 500), _outcome(local, "succeeded", 200)
    # A failure, then a success: no streak.
    assert await store.settle_many([(first, fail, t0), (second, ok, t0)]) == [None, None]
    assert (await endpoint_row(local, endpoint)).failing_since is None
    # A success, then a failure: the streak began at that failure.
    later = t0 + timedelta(seconds=30)
    local.clock.advance(30)
    [since] = await store.settle_many([(third, fail, later)])
    assert since == later
    assert (await endpoint_row(local, endpoint)).failing_since == later
    rows = [await delivery_of(local, endpoint, c.event_id) for c in (first, second, third)]
    assert [r.state for r in rows] == ["pending", "succeeded", "pending"]
    assert all(r.claimed_by is None for r in rows)
    assert [len(await attempts_of(local, r.id)) for r in rows] == [1, 1, 1]


async def test_a_lost_claim_changes_nothing_but_its_attempt_is_recorded(local) -> None:
    store = DeliveryStore(engine=local.server.engine, worker_id="w")
    endpoint, claim = await _claims(local, store, 1)
    # The lease ran out and another worker took the row.
    local.clock.advance(61)
    [again] = await store.claim(
        now=local.clock.now(), lease_seconds=60, limit=1, per_endpoint=1, busy={}
    )
    assert again.attempt == 2
    await store.settle_many([(claim, _outcome(local, "succeeded", 200), local.clock.now())])
    row = await delivery_of(local, endpoint, claim.event_id)
    assert (row.state, row.claimed_by) == ("pending", again.token)
    assert [a.number for a in await attempts_of(local, row.id)] == [1]
    await store.settle(again, _outcome(local, "succeeded", 200), now=local.clock.now())
    row = await delivery_of(local, endpoint, claim.event_id)
    assert (row.state, row.attempts) == ("succeeded", 2)
    assert [a.number for a in await attempts_of(local, row.id)] == [1, 2]
