"""New-network detection in the store (sessions/new_networks.py), on SQLite and Postgres:
baselines, one alert per new network under parallel sign-ins, and nothing stored that names
the address."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from palisade.auth.local_keys import LocalKeys
from palisade.auth.sessions.new_networks import (
    known_networks,
    new_network_alerts,
    observe_sign_in,
    remember_network,
)
from palisade.auth.store import MIGRATIONS_PACKAGE, AuthStore
from palisade.common.db import create_engine
from palisade.common.migrations import upgrade

KEYS = LocalKeys(bytes(range(32)))
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[AuthStore]:
    engine = create_engine(database_url, pool_size=12)
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)
        yield AuthStore(engine=engine)
    finally:
        await engine.dispose()


async def _observe(store: AuthStore, user_id: str, ip: str | None) -> bool:
    async def unit(tx) -> bool:  # type: ignore[no-untyped-def]
        return await observe_sign_in(
            tx,
            KEYS,
            user_id=user_id,
            workspace_id="ws_" + "0" * 32,
            ip=ip,
            device="Firefox on Linux",
            method="password",
            session_id="ses_" + uuid.uuid4().hex,
            now=NOW,
        )

    return await store.run(unit)


async def _count(store: AuthStore, query) -> int:  # type: ignore[no-untyped-def]
    async with store.transaction() as tx:
        return int((await tx.conn.execute(query)).scalar_one())


async def test_the_first_network_is_a_baseline_and_only_a_later_new_one_alerts(
    store: AuthStore,
) -> None:
    user = f"usr_{uuid.uuid4().hex}"
    assert await _observe(store, user, "203.0.113.7") is False  # no networks yet: baseline
    assert await _observe(store, user, "203.0.113.7") is False  # known
    assert await _observe(store, user, "198.51.100.1") is True  # new
    assert await _observe(store, user, "198.51.100.1") is False
    # IPv6 by /64: another address in the network is known, another network is not.
    assert await _observe(store, user, "2001:db8:1:2::1") is True
    assert await _observe(store, user, "2001:db8:1:2:ffff::9") is False
    assert await _observe(store, user, "2001:db8:1:3::1") is True
    assert await _observe(store, user, None) is False  # no address: nothing to compare
    alerts = select(func.count()).select_from(new_network_alerts)
    assert await _count(store, alerts.where(new_network_alerts.c.user_id == user)) == 3
    # Each user has their own networks.
    other = f"usr_{uuid.uuid4().hex}"
    assert await _observe(store, other, "198.51.100.1") is False


async def test_sign_up_network_counts_as_seen(store: AuthStore) -> None:
    user = f"usr_{uuid.uuid4().hex}"
    async with store.transaction() as tx:
        await remember_network(tx, KEYS, user_id=user, ip="203.0.113.7", now=NOW)
    assert await _observe(store, user, "203.0.113.7") is False
    assert await _observe(store, user, "203.0.113.8") is True


async def test_parallel_sign_ins_from_one_new_network_alert_once(store: AuthStore) -> None:
    user = f"usr_{uuid.uuid4().hex}"
    await _observe(store, user, "203.0.113.7")
    results = await asyncio.gather(*(_observe(store, user, "198.51.100.1") for _ in range(10)))
    assert sorted(results) == [False] * 9 + [True]
    alerts = select(func.count()).select_from(new_network_alerts)
    assert await _count(store, alerts.where(new_network_alerts.c.user_id == user)) == 1


async def test_known_networks_never_hold_an_address(store: AuthStore) -> None:
    user = f"usr_{uuid.uuid4().hex}"
    await _observe(store, user, "203.0.113.7")
    await _observe(store, user, "2001:db8:1:2::1")
    async with store.transaction() as tx:
        rows = (
            await tx.conn.execute(
                select(known_networks.c.network_key).where(known_networks.c.user_id == user)
            )
        ).all()
    assert len(rows) == 2
    for (key,) in rows:
        assert key.startswith("n1:")
        assert "203.0" not in key
        assert "2001" not in key
        assert "db8" not in key
