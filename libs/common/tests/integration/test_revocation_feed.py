"""The shared revocation feed and outbox (palisade.common.revocation_feed / revocation_outbox),
as a service other than auth uses them: its own table name, its own lock key, plain payloads.

The outbox and relay run on SQLite and Postgres, the feed on a real Redis. No sleeps: passes
are driven by hand.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import MetaData, func, insert, select

from palisade.common.clock import ManualClock
from palisade.common.db import create_engine
from palisade.common.revocation_feed import FeedEvent, LocalRevocationFeed, RedisRevocationFeed
from palisade.common.revocation_outbox import (
    RevocationOutbox,
    RevocationRelay,
    revocation_outbox_table,
)

LOCK_KEY = 0x7465_7374_7265_7631  # "testrev1"
metadata = MetaData()
table = revocation_outbox_table(metadata, "key_revocation_outbox")


def _payload(i: int) -> dict[str, Any]:
    return {"k": [f"key_{i}"], "r": "revoked"}


class FlakyFeed(LocalRevocationFeed):
    """Refuses the next `failures` publishes."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.published: list[dict[str, Any]] = []

    async def publish(self, payload: dict[str, Any]) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis went away")
        self.published.append(payload)
        await asyncio.sleep(0)  # concurrent passes interleave here
        return await super().publish(payload)


@pytest.fixture
async def engine(database_url):
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


def _relay(engine, feed, outbox, **options) -> RevocationRelay:
    return RevocationRelay(engine=engine, feed=feed, outbox=outbox, lock_key=LOCK_KEY, **options)


async def _enqueue(engine, outbox: RevocationOutbox, *payloads: dict[str, Any]) -> None:
    async with engine.begin() as conn:
        for payload in payloads:
            await outbox.enqueue(conn, payload)


async def _pending(engine) -> int:
    async with engine.begin() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def _read(stream, count: int) -> list[FeedEvent]:
    return [await asyncio.wait_for(anext(stream), timeout=5) for _ in range(count)]


def test_the_table_has_the_columns_every_migration_creates() -> None:
    assert [c.name for c in table.columns] == ["id", "created_at", "notice"]
    assert table.name == "key_revocation_outbox"
    assert revocation_outbox_table(MetaData()).name == "revocation_outbox"


async def test_a_failed_publish_is_retried_in_order_and_no_heartbeat_goes_out_meanwhile(
    engine,
) -> None:
    feed = FlakyFeed(failures=2)
    outbox = RevocationOutbox(table=table, clock=ManualClock())
    relay = _relay(engine, feed, outbox)
    async with feed.subscribe() as stream:
        await _enqueue(engine, outbox, _payload(1), _payload(2))
        assert await relay.beat() is False
        assert await relay.beat() is False
        assert await _pending(engine) == 2
        assert await relay.beat() is True
        assert await _pending(engine) == 0
        events = await _read(stream, 3)
    assert events == [FeedEvent(1, _payload(1)), FeedEvent(2, _payload(2)), FeedEvent(2)]


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"v": 99}'])
async def test_an_unreadable_row_is_skipped_as_a_gap(engine, raw) -> None:
    def validate(payload: dict[str, Any]) -> None:
        if "k" not in payload:
            raise KeyError("k")

    feed = LocalRevocationFeed()
    outbox = RevocationOutbox(table=table, clock=ManualClock())
    relay = _relay(engine, feed, outbox, validate=validate)
    async with feed.subscribe() as stream:
        async with engine.begin() as conn:
            await conn.execute(
                insert(table).values(created_at=datetime(2026, 1, 1, tzinfo=UTC), notice=raw)
            )
        await _enqueue(engine, outbox, _payload(2))
        assert await relay.beat() is True
        events = await _read(stream, 2)
    assert events == [FeedEvent(2, _payload(2)), FeedEvent(2)]  # number 1 used up: a gap


async def test_without_a_validator_any_json_object_is_published(engine) -> None:
    feed = LocalRevocationFeed()
    outbox = RevocationOutbox(table=table, clock=ManualClock())
    async with feed.subscribe() as stream:
        await _enqueue(engine, outbox, {"v": 99})
        assert await _relay(engine, feed, outbox).relay_once() is True
        assert await _read(stream, 1) == [FeedEvent(1, {"v": 99})]


async def test_rows_are_stored_as_json_and_published_in_batches(engine) -> None:
    feed = FlakyFeed()
    outbox = RevocationOutbox(table=table, clock=ManualClock())
    await _enqueue(engine, outbox, *(_payload(i) for i in range(7)))
    async with engine.begin() as conn:
        first = (await conn.execute(select(table.c.notice).order_by(table.c.id))).scalars().first()
    assert json.loads(first or "") == _payload(0)
    assert await _relay(engine, feed, outbox, batch_size=3).relay_once() is True
    assert feed.published == [_payload(i) for i in range(7)]


async def test_the_running_relay_beats_and_publishes_when_notified(engine) -> None:
    feed = LocalRevocationFeed()
    outbox = RevocationOutbox(table=table, clock=ManualClock())
    relay = _relay(engine, feed, outbox, heartbeat_seconds=60)
    async with feed.subscribe() as stream, relay.running():
        assert await asyncio.wait_for(anext(stream), timeout=5) == FeedEvent(0)
        await _enqueue(engine, outbox, _payload(1))
        outbox.notify()
        assert await asyncio.wait_for(anext(stream), timeout=5) == FeedEvent(1, _payload(1))


def test_bad_relay_settings_are_refused() -> None:
    outbox = RevocationOutbox(table=table, clock=ManualClock())
    with pytest.raises(ValueError):
        RevocationRelay(
            engine=None,  # type: ignore[arg-type]
            feed=LocalRevocationFeed(),
            outbox=outbox,
            lock_key=LOCK_KEY,
            batch_size=0,
        )


# --- Postgres: replicas take turns, per service's lock key ------------------------------------


@pytest.fixture
async def replica_engines(postgres_url):
    engines = [create_engine(postgres_url) for _ in range(2)]
    async with engines[0].begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engines
    for one in engines:
        await one.dispose()


@pytest.mark.postgres
async def test_replicas_take_turns_so_each_payload_is_published_once(replica_engines) -> None:
    outbox = RevocationOutbox(table=table, clock=ManualClock())
    await _enqueue(replica_engines[0], outbox, *(_payload(i) for i in range(30)))
    published: list[dict[str, Any]] = []
    feeds = [FlakyFeed(), FlakyFeed()]
    relays = [
        _relay(engine, feed, outbox, batch_size=4)
        for engine, feed in zip(replica_engines, feeds, strict=True)
    ]
    for _ in range(3):
        await asyncio.gather(*(relay.relay_once() for relay in relays for _ in range(2)))
    for feed in feeds:
        published.extend(feed.published)
    assert sorted(p["k"][0] for p in published) == sorted(f"key_{i}" for i in range(30))
    assert await _pending(replica_engines[0]) == 0


@pytest.mark.postgres
async def test_another_service_lock_key_does_not_wait_for_this_one(replica_engines) -> None:
    # Two services' relays in one database (or one server) must not serialise each other.
    gate, entered = asyncio.Event(), asyncio.Event()

    class Stuck(FlakyFeed):
        async def publish(self, payload: dict[str, Any]) -> int:
            entered.set()  # inside the pass: the lock is held
            await gate.wait()
            return await super().publish(payload)

    outbox = RevocationOutbox(table=table, clock=ManualClock())
    other_table = revocation_outbox_table(MetaData(), "other_revocation_outbox")
    async with replica_engines[0].begin() as conn:
        await conn.run_sync(other_table.metadata.create_all)
    other_outbox = RevocationOutbox(table=other_table, clock=ManualClock())
    await _enqueue(replica_engines[0], outbox, _payload(1))
    await _enqueue(replica_engines[1], other_outbox, _payload(2))
    stuck = _relay(replica_engines[0], Stuck(), outbox)
    same_key = _relay(replica_engines[1], FlakyFeed(), outbox, turn_wait_ms=50)
    other_feed = FlakyFeed()
    other = RevocationRelay(
        engine=replica_engines[1],
        feed=other_feed,
        outbox=other_outbox,
        lock_key=LOCK_KEY + 1,
        turn_wait_ms=50,
    )
    holder = asyncio.create_task(stuck.relay_once())
    try:
        await asyncio.wait_for(entered.wait(), timeout=5)
        assert await same_key.beat() is False  # waits its turn, sends no heartbeat
        assert await other.beat() is True  # its own lock: not held up
        assert other_feed.published == [_payload(2)]
    finally:
        gate.set()
        assert await asyncio.wait_for(holder, timeout=5) is True


# --- Redis: one global sequence, one channel per database --------------------------------------


@pytest.fixture
async def redis_pair(redis_url):
    first, second = Redis.from_url(redis_url), Redis.from_url(redis_url)
    name = f"test:keyrevocations:{uuid.uuid4().hex}"
    yield [
        RedisRevocationFeed(r, channel=name, sequence_key=f"{name}:sequence")
        for r in (first, second)
    ]
    await first.aclose()
    await second.aclose()


@pytest.mark.redis
async def test_redis_numbers_payloads_globally_and_heartbeats_name_the_latest(redis_pair) -> None:
    one, two = redis_pair
    async with one.subscribe() as stream:
        numbers = await asyncio.gather(
            *((one if i % 2 else two).publish(_payload(i)) for i in range(20))
        )
        assert await two.skip() == 21
        await two.heartbeat()
        events = await _read(stream, 21)
    assert sorted(numbers) == list(range(1, 21))
    assert [e.sequence for e in events[:20]] == list(range(1, 21))
    assert sorted(e.payload["k"][0] for e in events[:20] if e.payload) == sorted(
        f"key_{i}" for i in range(20)
    )
    assert events[20] == FeedEvent(21)


@pytest.mark.redis
async def test_redis_channels_are_per_database_unless_exact(redis_url) -> None:
    base, db = redis_url.rsplit("/", 1)
    ours, theirs = Redis.from_url(redis_url), Redis.from_url(f"{base}/{(int(db) + 15) % 16}")
    name = f"test:keyrevocations:{uuid.uuid4().hex}"
    key = f"{name}:sequence"
    try:
        mine = RedisRevocationFeed(ours, channel=name, sequence_key=key)
        other = RedisRevocationFeed(theirs, channel=name, sequence_key=key)
        assert mine.channel == f"{name}:db{db}"
        exact = RedisRevocationFeed(ours, channel=name, sequence_key=key, exact_channel=True)
        assert exact.channel == name
        await theirs.set(key, 1000)
        async with mine.subscribe() as stream:
            await other.heartbeat()  # another deployment's beat: must not reach us
            await mine.publish(_payload(1))
            await mine.heartbeat()
            events = await _read(stream, 2)
        assert events == [FeedEvent(1, _payload(1)), FeedEvent(1)]
    finally:
        await theirs.delete(key)
        await ours.aclose()
        await theirs.aclose()
