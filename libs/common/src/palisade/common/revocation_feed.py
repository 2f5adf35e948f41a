"""A numbered revocation feed: announcements that make every gateway's cache forget something.

Production: a Redis pub/sub channel (every gateway replica subscribes through a service's
Watch... stream on some replica). Embedded default: an in-process fan-out inside the
service's process, served to the gateway's process by that stream. The database stays the
authority; the feed only makes caches forget within a second instead of at their maximum age.
What a notice says is the service's business: here it is a JSON object (auth: ended sessions
and their access tokens; apikeys: revoked keys).

The feed is gap-proof: every notice carries a sequence number (one global sequence with
Redis: INCR and PUBLISH run in one Lua script, so numbers follow the channel's order), and
heartbeats name the latest number published. A subscriber that sees a number skipped, or
hears no heartbeat for a while, knows it may have missed a notice and forgets its cache.
Notices reach the feed from a durable outbox (palisade.common.revocation_outbox), so a failed
publish is retried, never dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc
from redis.asyncio import Redis

log = logging.getLogger("palisade.common.revocation_feed")
_QUEUE_LIMIT = 10_000


@dataclass(frozen=True)
class FeedEvent:
    """What a subscriber receives: a numbered notice, or a heartbeat (payload None) naming the
    number of the latest notice published."""

    sequence: int
    payload: dict[str, Any] | None = None

    @property
    def heartbeat(self) -> bool:
        return self.payload is None


class RevocationFeed(Protocol):
    async def publish(self, payload: dict[str, Any]) -> int:
        """Numbers and delivers a notice; returns its number. Raises if it was not sent."""
        ...

    async def heartbeat(self) -> None:
        """Tells every subscriber the number of the latest notice (and that the feed lives)."""
        ...

    async def skip(self) -> int:
        """Uses up a number without a notice: subscribers see a gap at the next heartbeat and
        empty their caches (for a notice that cannot be read, so cannot be sent)."""
        ...

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[FeedEvent]]:
        """Yields the stream of events published from now on."""
        ...


class LocalRevocationFeed:
    """The embedded stand-in for Redis: one process's subscribers, one process's numbering."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[FeedEvent]] = set()
        self._sequence = 0

    @property
    def sequence(self) -> int:
        return self._sequence

    async def publish(self, payload: dict[str, Any]) -> int:
        self._sequence += 1
        self._fan_out(FeedEvent(self._sequence, payload))
        return self._sequence

    async def heartbeat(self) -> None:
        self._fan_out(FeedEvent(self._sequence))

    async def skip(self) -> int:
        self._sequence += 1
        return self._sequence

    def _fan_out(self, event: FeedEvent) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a stuck subscriber must not stall revocation for the others
                log.error("revocation subscriber is not keeping up; dropping it")
                self._subscribers.discard(queue)
                continue
            queue.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[FeedEvent]]:
        queue: asyncio.Queue[FeedEvent] = asyncio.Queue(_QUEUE_LIMIT)
        self._subscribers.add(queue)

        async def events() -> AsyncIterator[FeedEvent]:
            # Dropped (only ever with a full queue): the stream ends, so the subscriber
            # reconnects instead of resuming with notices missing.
            while queue in self._subscribers:
                yield await queue.get()

        try:
            yield events()
        finally:
            self._subscribers.discard(queue)


# One script each, so numbering and publishing are one atomic step on the Redis server: the
# channel carries notices in sequence order, and a heartbeat is never ahead of the notice it
# names (whichever replica sends it).
_PUBLISH = """
local n = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], '{"q":' .. n .. ',"n":' .. ARGV[2] .. '}')
return n
"""
_HEARTBEAT = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('PUBLISH', ARGV[1], '{"q":' .. n .. ',"n":null}')
return n
"""


def _database_number(redis: Redis) -> int:
    return int(redis.connection_pool.connection_kwargs.get("db", 0))


class RedisRevocationFeed:
    def __init__(
        self, redis: Redis, *, channel: str, sequence_key: str, exact_channel: bool = False
    ) -> None:
        """channel is a base name, suffixed with the Redis database number unless
        exact_channel (tests that want a channel of their own)."""
        self._redis = redis
        # Pub/sub channels are global to a Redis server while keys live in one numbered
        # database: two deployments on one server (different databases) must not share a
        # channel, or each would see the other's numbering as gaps and keep flushing caches.
        self._channel = channel if exact_channel else f"{channel}:db{_database_number(redis)}"
        self._key = sequence_key
        self._publish = redis.register_script(_PUBLISH)
        self._heartbeat = redis.register_script(_HEARTBEAT)

    @property
    def channel(self) -> str:
        return self._channel

    async def publish(self, payload: dict[str, Any]) -> int:
        # The script splices the JSON text into the message: it must be one JSON value.
        body = json.dumps(payload)
        return int(await self._publish(keys=[self._key], args=[self._channel, body]))

    async def heartbeat(self) -> None:
        await self._heartbeat(keys=[self._key], args=[self._channel])

    async def skip(self) -> int:
        return int(await self._redis.incr(self._key))

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[FeedEvent]]:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._channel)

        async def events() -> AsyncIterator[FeedEvent]:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    doc = json.loads(message["data"])
                    yield FeedEvent(int(doc["q"]), doc["n"])

        try:
            yield events()
        finally:
            await pubsub.unsubscribe(self._channel)
            await pubsub.aclose()  # type: ignore[no-untyped-call]


# Initial metadata of a WatchRevocations stream: the service has subscribed to its feed, so the
# gateway following the stream will miss nothing published from then on.
SUBSCRIBED_METADATA = ("x-palisade-subscribed", "1")
E = TypeVar("E")
M = TypeVar("M")


async def serve_subscription(
    subscription: AbstractAsyncContextManager[AsyncIterator[E]],
    context: grpc.aio.ServicerContext[Any, Any],
    message: Callable[[E], M],
) -> AsyncIterator[M]:
    """A WatchRevocations stream: subscribes first, then says so (SUBSCRIBED_METADATA), then
    yields message(event) for every notice and heartbeat."""
    async with subscription as events:
        await context.send_initial_metadata((SUBSCRIBED_METADATA,))
        async for event in events:
            yield message(event)
