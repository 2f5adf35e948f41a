"""Who depends on which blind-index key versions, so a version in use is never retired.

Every service that asks for a blind index is recorded (once per service per process: an
in-memory set in front of one upsert), before it gets its first token. A service that stores
tokens reports, with ReportIndexVersions, the versions its rows still use (auth does it at the
end of `palisade-auth reindex`). `palisade-crypto keys retire --below N --index` then refuses
unless every recorded service's latest report shows no version below N and was made after
version N (the first version at or above it) was created, plus a margin for keyring reloads
and requests in flight: a report from before that moment cannot vouch for rows written later
with an older primary. There is no way to force it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Column, MetaData, String, Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.clock import Clock
from palisade.common.db import UTCDateTime
from palisade.crypto.keyring import VersionedKeys

metadata = MetaData()
index_consumers = Table(
    "index_consumers",
    metadata,
    Column("service", String(64), primary_key=True),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("versions_in_use", String(512), nullable=True),
    Column("reported_at", UTCDateTime(), nullable=True),
)

# After version N is created: every replica has reloaded the keyring (keyring_reload_seconds)
# and any request that was given an older token has stored it. Reports older than that can
# not speak for rows written since.
IN_FLIGHT_MARGIN = timedelta(seconds=60)


def _encode(versions: Sequence[int]) -> str:
    return ",".join(str(v) for v in sorted(set(versions)))


def _decode(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


class IndexConsumers:
    """The crypto database's record of index consumers (shared by every replica)."""

    def __init__(self, *, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._known: set[str] = set()
        self._lock = asyncio.Lock()

    async def seen(self, service: str) -> None:
        """Records service as an index consumer; a database write only the first time per
        process. Raises (and records nothing in memory) if the write fails, so no service gets
        a token without being on record."""
        if service in self._known:
            return
        async with self._lock:
            if service in self._known:
                return
            now = self._clock.now()
            insert = self._insert(index_consumers).values(
                service=service, first_seen_at=now, last_seen_at=now
            )
            upsert = insert.on_conflict_do_update(
                index_elements=[index_consumers.c.service],
                set_={"last_seen_at": insert.excluded.last_seen_at},
            )
            async with self._engine.begin() as conn:
                await conn.execute(upsert)
            self._known.add(service)

    async def report(self, service: str, versions: Sequence[int]) -> None:
        """Replaces service's report of the index versions its rows use."""
        await self.seen(service)
        async with self._engine.begin() as conn:
            await conn.execute(
                update(index_consumers)
                .where(index_consumers.c.service == service)
                .values(versions_in_use=_encode(versions), reported_at=self._clock.now())
            )


@dataclass(frozen=True)
class Consumer:
    service: str
    first_seen_at: datetime
    last_seen_at: datetime
    versions_in_use: list[int] | None
    reported_at: datetime | None


async def consumers(engine: AsyncEngine) -> list[Consumer]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(index_consumers).order_by("service"))).all()
    return [
        Consumer(
            service=r.service,
            first_seen_at=r.first_seen_at,
            last_seen_at=r.last_seen_at,
            versions_in_use=None if r.versions_in_use is None else _decode(r.versions_in_use),
            reported_at=r.reported_at,
        )
        for r in rows
    ]


def retire_blockers(
    index_keys: VersionedKeys,
    below: int,
    records: Sequence[Consumer],
    *,
    reload_seconds: float,
) -> list[str]:
    """Why index versions below `below` may not be retired yet (empty: they may)."""
    if below <= index_keys.min_version:
        return []  # nothing new would be retired
    successors = [v for v in index_keys.keys if v >= below]
    if not successors:
        return []  # retired_below refuses a version above the primary by itself
    since = index_keys.keys[min(successors)].created_at
    deadline = since + timedelta(seconds=reload_seconds) + IN_FLIGHT_MARGIN
    reasons = []
    for record in records:
        if record.versions_in_use is None or record.reported_at is None:
            reasons.append(
                f"service {record.service!r} has requested blind indexes but never reported "
                "the index versions its rows use (run its reindex job, e.g. palisade-auth reindex)"
            )
            continue
        old = [v for v in record.versions_in_use if v < below]
        if old:
            reasons.append(
                f"service {record.service!r} reported rows still using index version(s) "
                f"{', '.join(f'v{v}' for v in old)} (at {record.reported_at.isoformat()}); "
                "run its reindex job and resolve what it reports"
            )
        elif record.reported_at < deadline:
            reasons.append(
                f"service {record.service!r} last reported at {record.reported_at.isoformat()}, "
                f"before index key v{min(successors)} had fully taken over (after "
                f"{deadline.isoformat()}); run its reindex job again"
            )
    return reasons
