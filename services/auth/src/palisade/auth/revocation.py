"""The revocation feed: every ended session and its access tokens, announced to each gateway.

Production: a Redis pub/sub channel (every gateway replica subscribes, directly or through
WatchRevocations). Embedded default: an in-process fan-out inside the auth process, served to
the gateway's process by the WatchRevocations stream. The database stays the authority; the
feed only makes caches forget within a second instead of at their maximum age.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from redis.asyncio import Redis

log = logging.getLogger("palisade.auth.revocation")
CHANNEL = "palisade:revocations"
_QUEUE_LIMIT = 10_000


@dataclass(frozen=True)
class RevocationNotice:
    access_token_hashes: tuple[bytes, ...]
    session_ids: tuple[str, ...]
    user_id: str
    reason: str
    revoked_at: datetime

    def to_json(self) -> str:
        return json.dumps(
            {
                "h": [h.hex() for h in self.access_token_hashes],
                "s": list(self.session_ids),
                "u": self.user_id,
                "r": self.reason,
                "t": self.revoked_at.isoformat(),
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> RevocationNotice:
        doc = json.loads(raw)
        return cls(
            access_token_hashes=tuple(bytes.fromhex(h) for h in doc["h"]),
            session_ids=tuple(doc["s"]),
            user_id=doc["u"],
            reason=doc["r"],
            revoked_at=datetime.fromisoformat(doc["t"]),
        )


class RevocationFeed(Protocol):
    async def publish(self, notice: RevocationNotice) -> None: ...

    def subscribe(self) -> AbstractAsyncContextManager[AsyncIterator[RevocationNotice]]:
        """Yields the stream of notices published from now on."""
        ...


class LocalRevocationFeed:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[RevocationNotice]] = set()

    async def publish(self, notice: RevocationNotice) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a stuck subscriber must not stall revocation for the others
                log.error("revocation subscriber is not keeping up; dropping it")
                self._subscribers.discard(queue)
                continue
            queue.put_nowait(notice)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[RevocationNotice]]:
        queue: asyncio.Queue[RevocationNotice] = asyncio.Queue(_QUEUE_LIMIT)
        self._subscribers.add(queue)

        async def notices() -> AsyncIterator[RevocationNotice]:
            while queue in self._subscribers:
                yield await queue.get()

        try:
            yield notices()
        finally:
            self._subscribers.discard(queue)


class RedisRevocationFeed:
    def __init__(self, redis: Redis, *, channel: str = CHANNEL) -> None:
        self._redis = redis
        self._channel = channel

    async def publish(self, notice: RevocationNotice) -> None:
        await self._redis.publish(self._channel, notice.to_json())

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[RevocationNotice]]:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(self._channel)

        async def notices() -> AsyncIterator[RevocationNotice]:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield RevocationNotice.from_json(message["data"])

        try:
            yield notices()
        finally:
            await pubsub.unsubscribe(self._channel)
            await pubsub.aclose()  # type: ignore[no-untyped-call]
