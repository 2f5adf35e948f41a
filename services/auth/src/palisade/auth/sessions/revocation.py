"""The revocation feed: every ended session and its access tokens, announced to each gateway.

The numbered, gap-proof feed itself (Redis with one global sequence, or an in-process fan-out)
is palisade.common.revocation_feed, shared with the apikeys service; this module is auth's
typed face on it: a RevocationNotice goes out as its to_dict() payload and comes back as a
notice, so auth's code (the servicer's WatchRevocations) deals in notices only. Subscribers
see the feed through WatchRevocations; notices reach it from a durable outbox
(palisade.auth.sessions.revocation_outbox), whose common relay publishes the outbox's payloads
straight to the common feed underneath (`payloads`), having checked that each reads as a notice.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from redis.asyncio import Redis

from palisade.common import revocation_feed as common

# The channel's base name (the Redis database number is appended) and the sequence's key.
CHANNEL = "palisade:revocations"
SEQUENCE_KEY = "palisade:revocations:sequence"


@dataclass(frozen=True)
class RevocationNotice:
    access_token_hashes: tuple[bytes, ...]
    session_ids: tuple[str, ...]
    user_id: str
    reason: str
    revoked_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "h": [h.hex() for h in self.access_token_hashes],
            "s": list(self.session_ids),
            "u": self.user_id,
            "r": self.reason,
            "t": self.revoked_at.isoformat(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> RevocationNotice:
        return cls(
            access_token_hashes=tuple(bytes.fromhex(h) for h in doc["h"]),
            session_ids=tuple(doc["s"]),
            user_id=doc["u"],
            reason=doc["r"],
            revoked_at=datetime.fromisoformat(doc["t"]),
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> RevocationNotice:
        return cls.from_dict(json.loads(raw))


@dataclass(frozen=True)
class FeedEvent:
    """What a subscriber receives: a numbered notice, or a heartbeat (notice None) naming the
    number of the latest notice published."""

    sequence: int
    notice: RevocationNotice | None = None

    @property
    def heartbeat(self) -> bool:
        return self.notice is None


class RevocationFeed(Protocol):
    """palisade.common.revocation_feed.RevocationFeed, in notices instead of payloads."""

    async def publish(self, notice: RevocationNotice) -> int:
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

    @property
    def payloads(self) -> common.RevocationFeed:
        """The common feed underneath, carrying each notice as its to_dict() payload (what the
        common relay publishes outbox rows to)."""
        ...


class NoticeFeed:
    """A common feed carrying RevocationNotice payloads."""

    def __init__(self, feed: common.RevocationFeed) -> None:
        self._feed = feed

    @property
    def payloads(self) -> common.RevocationFeed:
        return self._feed

    async def publish(self, notice: RevocationNotice) -> int:
        return await self._feed.publish(notice.to_dict())

    async def heartbeat(self) -> None:
        await self._feed.heartbeat()

    async def skip(self) -> int:
        return await self._feed.skip()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[FeedEvent]]:
        async with self._feed.subscribe() as events:

            async def notices() -> AsyncIterator[FeedEvent]:
                async for event in events:
                    payload = event.payload
                    notice = None if payload is None else RevocationNotice.from_dict(payload)
                    yield FeedEvent(event.sequence, notice)

            yield notices()


class LocalRevocationFeed(NoticeFeed):
    def __init__(self, local: common.LocalRevocationFeed | None = None) -> None:
        """local: the in-process common feed underneath (tests pass one that misbehaves)."""
        self._local = common.LocalRevocationFeed() if local is None else local
        super().__init__(self._local)

    @property
    def sequence(self) -> int:
        return self._local.sequence


class RedisRevocationFeed(NoticeFeed):
    def __init__(
        self, redis: Redis, *, channel: str | None = None, sequence_key: str = SEQUENCE_KEY
    ) -> None:
        """channel: an exact channel name (tests); by default CHANNEL for this database."""
        super().__init__(
            common.RedisRevocationFeed(
                redis,
                channel=channel or CHANNEL,
                sequence_key=sequence_key,
                exact_channel=bool(channel),
            )
        )
