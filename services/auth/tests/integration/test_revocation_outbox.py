"""The revocation feed cannot silently drop (issue 9 item 6, SECURITY.md 24).

A notice commits with its revocation (the outbox) and the relay publishes it; a failed
publish is retried, never dropped, and no heartbeat goes out while a notice is pending (so
gateways stop trusting their caches). With Redis, numbers are one global sequence across
auth replicas (INCR and PUBLISH in one script). Store tests run on SQLite and Postgres; the
Redis tests on a real Redis. No sleeps: passes are driven by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, insert, select

from palisade.auth.sessions.revocation import (
    SEQUENCE_KEY,
    FeedEvent,
    LocalRevocationFeed,
    NoticeFeed,
    RedisRevocationFeed,
    RevocationNotice,
)
from palisade.auth.sessions.revocation_outbox import (
    RevocationOutbox,
    RevocationRelay,
    revocation_outbox,
)
from palisade.auth.store import MIGRATIONS_PACKAGE, AuthStore
from palisade.common import revocation_feed as common
from palisade.common.clock import ManualClock
from palisade.common.db import create_engine
from palisade.common.migrations import upgrade
from palisade_api.auth.v1 import auth_pb2 as pb


def _notice(i: int) -> RevocationNotice:
    return RevocationNotice(
        (hashlib.sha256(f"t{i}".encode()).digest(),),
        (f"ses_{i}",),
        f"usr_{i}",
        "logout",
        datetime(2026, 1, 1, tzinfo=UTC),
    )


class FlakyPayloads(common.LocalRevocationFeed):
    """Refuses the next `failures` publishes. The relay publishes to the common feed under
    auth's notice feed (payloads), so that is where a Redis outage is staged."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def publish(self, payload: dict[str, Any]) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("redis went away")
        return await super().publish(payload)


class FlakyFeed(LocalRevocationFeed):
    """Refuses the next `failures` publishes (and heartbeats while it refuses)."""

    def __init__(self, failures: int) -> None:
        super().__init__(FlakyPayloads(failures))


@pytest.fixture
async def store(database_url):
    engine = create_engine(database_url)
    await upgrade(engine, MIGRATIONS_PACKAGE)
    yield AuthStore(engine=engine)
    await engine.dispose()


async def _pending(store: AuthStore) -> int:
    async with store.transaction() as tx:
        return int(
            (
                await tx.conn.execute(select(func.count()).select_from(revocation_outbox))
            ).scalar_one()
        )


async def _read(stream, count: int) -> list[FeedEvent]:
    return [await asyncio.wait_for(anext(stream), timeout=5) for _ in range(count)]


async def test_a_failed_publish_is_retried_and_delivered_never_dropped(store) -> None:
    feed = FlakyFeed(failures=3)
    outbox = RevocationOutbox(clock=ManualClock())
    relay = RevocationRelay(engine=store._engine, feed=feed, outbox=outbox)
    async with feed.subscribe() as stream:
        async with store.transaction() as tx:
            await outbox.enqueue(tx, _notice(1))
            await outbox.enqueue(tx, _notice(2))
        assert await relay.relay_once() is False  # Redis away: kept
        assert await relay.beat() is False  # and no heartbeat vouches for a complete feed
        assert await _pending(store) == 2
        assert feed.sequence == 0  # nothing went out
        assert await relay.beat() is False  # still failing: still kept, still silent
        assert await relay.beat() is True  # back: delivered, in order, then a heartbeat
        assert await _pending(store) == 0
        events = await _read(stream, 3)
    assert events == [FeedEvent(1, _notice(1)), FeedEvent(2, _notice(2)), FeedEvent(2)]


async def test_an_unreadable_notice_becomes_a_gap_not_a_stall(store) -> None:
    # Review finding: one row that does not parse (say, written by a newer format during a
    # rolling deploy) stopped every later notice and every heartbeat, on every replica, for good.
    feed = LocalRevocationFeed()
    outbox = RevocationOutbox(clock=ManualClock())
    relay = RevocationRelay(engine=store._engine, feed=feed, outbox=outbox)
    async with feed.subscribe() as stream:
        async with store.transaction() as tx:
            await tx.conn.execute(
                insert(revocation_outbox).values(
                    created_at=datetime(2026, 1, 1, tzinfo=UTC), notice='{"v": 99}'
                )
            )
            await outbox.enqueue(tx, _notice(2))
        assert await relay.beat() is True  # drained: the later notice and a heartbeat went out
        assert await _pending(store) == 0
        events = await _read(stream, 2)
    # Number 1 was used up without a notice: every gateway sees the gap and empties its cache.
    assert events == [FeedEvent(2, _notice(2)), FeedEvent(2)]


async def test_a_rolled_back_revocation_announces_nothing(store) -> None:
    feed = LocalRevocationFeed()
    outbox = RevocationOutbox(clock=ManualClock())
    relay = RevocationRelay(engine=store._engine, feed=feed, outbox=outbox)

    async def failing_revocation() -> None:
        async with store.transaction() as tx:
            await outbox.enqueue(tx, _notice(1))
            raise RuntimeError("the revocation failed")

    with pytest.raises(RuntimeError):
        await failing_revocation()
    assert await relay.relay_once() is True
    assert feed.sequence == 0


async def test_the_running_relay_beats_and_publishes_when_notified(store) -> None:
    feed = LocalRevocationFeed()
    outbox = RevocationOutbox(clock=ManualClock())
    relay = RevocationRelay(engine=store._engine, feed=feed, outbox=outbox, heartbeat_seconds=60)
    async with feed.subscribe() as stream, relay.running():
        assert await asyncio.wait_for(anext(stream), timeout=5) == FeedEvent(0)  # first beat
        async with store.transaction() as tx:
            await outbox.enqueue(tx, _notice(1))
        outbox.notify()
        assert await asyncio.wait_for(anext(stream), timeout=5) == FeedEvent(1, _notice(1))


# --- Redis: one global sequence across replicas ------------------------------------------------


@pytest.fixture
async def redis_pair(redis_url):
    first, second = Redis.from_url(redis_url), Redis.from_url(redis_url)
    channel = f"test:revocations:{uuid.uuid4().hex}"
    key = f"{channel}:sequence"
    feeds = [RedisRevocationFeed(r, channel=channel, sequence_key=key) for r in (first, second)]
    yield feeds
    await first.aclose()
    await second.aclose()


@pytest.mark.redis
async def test_redis_numbers_notices_globally_across_replicas_in_channel_order(redis_pair) -> None:
    one, two = redis_pair
    async with one.subscribe() as stream:
        numbers = await asyncio.gather(
            *((one if i % 2 else two).publish(_notice(i)) for i in range(40))
        )
        await two.heartbeat()
        events = [await asyncio.wait_for(anext(stream), timeout=5) for _ in range(41)]
    assert sorted(numbers) == list(range(1, 41))
    assert [e.sequence for e in events[:40]] == list(range(1, 41))  # delivered in number order
    assert {e.notice for e in events[:40]} == {_notice(i) for i in range(40)}
    assert events[40] == FeedEvent(40)  # the other replica's heartbeat names the latest


@pytest.mark.redis
async def test_redis_relay_retries_until_redis_takes_the_notice(redis_pair, store) -> None:
    feed, _ = redis_pair
    outbox = RevocationOutbox(clock=ManualClock())

    class Outage:
        """Redis refusing for one pass, then the real feed (the common feed the relay uses)."""

        failures = 1

        async def publish(self, payload: dict[str, Any]) -> int:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("redis went away")
            return await feed.payloads.publish(payload)

        async def heartbeat(self) -> None:
            await feed.payloads.heartbeat()

        async def skip(self) -> int:
            return await feed.payloads.skip()

        def subscribe(self):
            return feed.payloads.subscribe()

    relay = RevocationRelay(engine=store._engine, feed=NoticeFeed(Outage()), outbox=outbox)
    async with feed.subscribe() as stream:
        async with store.transaction() as tx:
            await outbox.enqueue(tx, _notice(7))
        assert await relay.beat() is False
        assert await relay.beat() is True
        events = [await asyncio.wait_for(anext(stream), timeout=5) for _ in range(2)]
    assert events == [FeedEvent(1, _notice(7)), FeedEvent(1)]


# --- replicas take turns: one relay pass at a time on Postgres ---------------------------------


class RecordingFeed(common.LocalRevocationFeed):
    """Records what it publishes (each notice's session id) into a list shared by every
    replica's feed, yielding to the event loop inside each publish so concurrent passes
    interleave; `gate`, when set, holds every publish until it opens (a relay stuck on Redis).
    A common feed, as the relay publishes to the one under auth's notice feed."""

    def __init__(self, published: list[str], gate: asyncio.Event | None = None) -> None:
        super().__init__()
        self.published = published
        self.gate = gate
        self.entered = asyncio.Event()
        self.heartbeats = 0

    async def publish(self, payload: dict[str, Any]) -> int:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        self.published.append(RevocationNotice.from_dict(payload).session_ids[0])
        return await super().publish(payload)

    async def heartbeat(self) -> None:
        self.heartbeats += 1
        await super().heartbeat()


@pytest.fixture
async def replica_engines(postgres_url):
    engines = [create_engine(postgres_url) for _ in range(2)]
    await upgrade(engines[0], MIGRATIONS_PACKAGE)
    yield engines
    for engine in engines:
        await engine.dispose()


@pytest.mark.postgres
async def test_replicas_take_turns_so_each_notice_is_published_once(replica_engines) -> None:
    # Regression (a flaky CI run): two replicas' relays read the same rows and both published
    # them, so one logout reached the feed as notices 1 and 2.
    published: list[str] = []
    outbox = RevocationOutbox(clock=ManualClock())
    store = AuthStore(engine=replica_engines[0])
    async with store.transaction() as tx:
        for i in range(40):
            await outbox.enqueue(tx, _notice(i))
    relays = [
        RevocationRelay(
            engine=engine,
            feed=LocalRevocationFeed(RecordingFeed(published)),
            outbox=outbox,
            batch_size=8,
        )
        for engine in replica_engines
    ]
    for _ in range(3):
        await asyncio.gather(*(relay.relay_once() for relay in relays for _ in range(2)))
    assert published == [f"ses_{i}" for i in range(40)]
    assert await _pending(store) == 0


@pytest.mark.postgres
async def test_a_replica_waiting_on_a_stuck_relay_gives_up_without_a_heartbeat(
    replica_engines,
) -> None:
    published: list[str] = []
    outbox = RevocationOutbox(clock=ManualClock())
    store = AuthStore(engine=replica_engines[0])
    async with store.transaction() as tx:
        await outbox.enqueue(tx, _notice(1))
    gate = asyncio.Event()
    stuck_feed, waiting_feed = RecordingFeed(published, gate), RecordingFeed(published)
    stuck = RevocationRelay(
        engine=replica_engines[0], feed=LocalRevocationFeed(stuck_feed), outbox=outbox
    )
    waiting = RevocationRelay(
        engine=replica_engines[1],
        feed=LocalRevocationFeed(waiting_feed),
        outbox=outbox,
        turn_wait_ms=50,
    )
    holder = asyncio.create_task(stuck.relay_once())
    await asyncio.wait_for(stuck_feed.entered.wait(), timeout=5)
    # The pending notice is not this replica's to vouch for while another pass holds it.
    assert await waiting.beat() is False
    assert waiting_feed.heartbeats == 0
    gate.set()
    assert await asyncio.wait_for(holder, timeout=5) is True
    assert await waiting.beat() is True
    assert waiting_feed.heartbeats == 1
    assert published == ["ses_1"]


# --- over gRPC: numbered notices and heartbeats reach a WatchRevocations subscriber -----------


@pytest.mark.postgres
@pytest.mark.parametrize("use_redis", [True, False], ids=["redis-two-replicas", "embedded"])
async def test_watch_revocations_streams_numbered_notices_and_heartbeats(
    auth_factory, use_redis
) -> None:
    replicas = 2 if use_redis else 1
    async with auth_factory(replicas=replicas, use_redis=use_redis) as auth:
        await auth.sign_up("feed@example.com")
        tokens = await auth.login("feed@example.com")
        grant = await auth.validate(tokens.access_token)
        watcher = auth.stubs[-1]  # with Redis: another replica than the one logging out
        stream = watcher.WatchRevocations(
            pb.WatchRevocationsRequest(), metadata=auth.gateway_service()
        )
        first = await asyncio.wait_for(stream.read(), timeout=5)
        assert first.heartbeat
        assert first.sequence == 0
        await auth.stubs[0].Logout(pb.LogoutRequest(), metadata=auth.as_user(grant))
        messages = []
        while len(messages) < 2 or messages[-1].sequence < 1 or not messages[-1].heartbeat:
            messages.append(await asyncio.wait_for(stream.read(), timeout=5))
        stream.cancel()
        notices = [m for m in messages if not m.heartbeat]
        assert [(n.sequence, list(n.session_ids)) for n in notices] == [(1, [grant.session_id])]
        assert messages[-1].heartbeat
        assert messages[-1].sequence == 1


@pytest.mark.redis
async def test_deployments_on_other_redis_databases_do_not_share_a_feed(redis_url) -> None:
    # Regression: the channel was one name for every database of a server, while the sequence
    # key is per database, so two deployments interleaved two numberings on one channel.
    base, db = redis_url.rsplit("/", 1)
    ours, theirs = Redis.from_url(redis_url), Redis.from_url(f"{base}/{(int(db) + 15) % 16}")
    try:
        mine, other = RedisRevocationFeed(ours), RedisRevocationFeed(theirs)
        # Numberings that differ, so a beat from the other database would be told apart.
        await theirs.set(SEQUENCE_KEY, int(await ours.get(SEQUENCE_KEY) or 0) + 1000)
        async with mine.subscribe() as stream:
            await other.heartbeat()  # another deployment's beat: must not reach us
            await mine.heartbeat()
            event = await asyncio.wait_for(anext(stream), timeout=5)
        assert event.sequence == int(await ours.get(SEQUENCE_KEY) or 0)
        assert event.notice is None
    finally:
        await ours.aclose()
        await theirs.aclose()


@pytest.mark.redis
async def test_redis_skip_uses_up_a_number_that_the_next_heartbeat_names(redis_pair) -> None:
    one, two = redis_pair
    async with one.subscribe() as stream:
        first = await one.publish(_notice(1))
        assert await two.skip() == first + 1  # global across replicas, like publish
        await one.heartbeat()
        events = await _read(stream, 2)
    assert events == [FeedEvent(first, _notice(1)), FeedEvent(first + 1)]
