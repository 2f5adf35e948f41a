"""Revocation notices from a durable outbox: a notice commits with the revocation it announces.

Publishing straight after commit lost the notice whenever the publish failed (Redis briefly
away, the process stopping between commit and publish), and gateways kept the revoked token
cached for up to their maximum age. Now the notice is a row written in the revocation's own
transaction; RevocationRelay publishes rows in order and deletes each once the feed took it,
retrying the rest every pass, so a notice is delayed by an outage but never dropped. Delivery
is at-least-once (a relay that dies between publishing and committing publishes again):
eviction is idempotent. On Postgres, replicas take turns by an advisory lock (a key per
service, since each service has its own outbox).

The relay also sends the feed's heartbeats, and only after a pass that left the outbox empty:
while notices cannot be published, gateways stop hearing heartbeats and stop trusting their
caches (see palisade.gateway.feed_follower), instead of trusting a feed that is silently
failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    delete,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.common.clock import Clock
from palisade.common.db import UTCDateTime
from palisade.common.revocation_feed import RevocationFeed
from palisade.common.tasks import running_in_background

log = logging.getLogger("palisade.common.revocation_outbox")

_LOCK_NOT_AVAILABLE = "55P03"


def revocation_outbox_table(metadata: MetaData, name: str = "revocation_outbox") -> Table:
    """The outbox table; every service's migration creates exactly these columns."""
    return Table(
        name,
        metadata,
        Column(
            "id",
            BigInteger().with_variant(Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("created_at", UTCDateTime(), nullable=False),
        # The payload as JSON text: hashes and ids (never a token or a key) and a reason.
        Column("notice", Text, nullable=False),
    )


class RevocationOutbox:
    """Adds notices to the caller's transaction; the relay publishes them after commit.

    async with engine.begin() as conn:
        ...                                    # the revocation
        await outbox.enqueue(conn, payload)
    outbox.notify()                            # after commit: wake this process's relay
    """

    def __init__(self, *, table: Table, clock: Clock) -> None:
        self._table = table
        self._clock = clock
        self._wake = asyncio.Event()

    @property
    def table(self) -> Table:
        return self._table

    async def enqueue(self, conn: AsyncConnection, payload: dict[str, Any]) -> None:
        await conn.execute(
            insert(self._table).values(created_at=self._clock.now(), notice=json.dumps(payload))
        )

    def notify(self) -> None:
        """Wakes this process's relay now instead of at its next pass; call after commit."""
        self._wake.set()

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake.clear()


class RevocationRelay:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        feed: RevocationFeed,
        outbox: RevocationOutbox,
        lock_key: int,
        heartbeat_seconds: float = 0.5,
        batch_size: int = 100,
        turn_wait_ms: int = 1000,
        validate: Callable[[dict[str, Any]], object] | None = None,
    ) -> None:
        """lock_key: the pg advisory lock key that serialises this outbox's passes across
        replicas (a fixed 64-bit number no other lock in the database uses).
        validate: raises ValueError, KeyError or TypeError for a payload that subscribers
        could not read (say, a newer format); such a row is skipped (see _publish)."""
        if heartbeat_seconds <= 0 or batch_size < 1 or turn_wait_ms < 1:
            raise ValueError("heartbeat_seconds, batch_size and turn_wait_ms must be > 0")
        self._engine = engine
        self._feed = feed
        self._outbox = outbox
        self._table = outbox.table
        self._lock_key = lock_key
        self._heartbeat_seconds = heartbeat_seconds
        self._batch_size = batch_size
        self._turn_wait_ms = turn_wait_ms
        self._validate = validate

    async def relay_once(self) -> bool:
        """Publishes pending notices in order, deleting each once published; returns whether
        the outbox is now empty. A failed publish leaves its row (and the later ones) for the
        next pass.

        On Postgres a pass holds a transaction-scoped advisory lock, so replicas take turns
        instead of publishing the same rows twice (which used up two feed numbers for one
        revocation). A replica waits for the lock (a pass takes milliseconds) so a notice it
        just committed goes out at once; if the holder is stuck (say, on a Redis that stopped
        answering) it gives up after turn_wait_ms and reports "not drained", and sends no
        heartbeat that would vouch for notices it has not seen published.
        The deletes commit with the pass; if the process dies first, the rows are published
        again (at-least-once, and eviction is idempotent)."""
        table = self._table
        while True:
            async with self._engine.begin() as conn:
                if conn.dialect.name == "postgresql" and not await _take_turn(
                    conn, self._lock_key, self._turn_wait_ms
                ):
                    return False
                rows = (
                    await conn.execute(
                        select(table.c.id, table.c.notice)
                        .order_by(table.c.id)
                        .limit(self._batch_size)
                    )
                ).all()
                if not rows:
                    return True
                for row_id, raw in rows:
                    if not await self._publish(row_id, raw):
                        return False  # leaving the block commits the rows already published
                    await conn.execute(delete(table).where(table.c.id == row_id))
            if len(rows) < self._batch_size:
                return True

    async def _publish(self, row_id: int, raw: str) -> bool:
        """Puts one row on the feed; returns whether the feed took it."""
        try:
            payload = self._readable(raw)
            if payload is None:
                # Left in place it would stop every later notice and every heartbeat for
                # good; dropped silently it would lose a revocation. Using up its number makes
                # every gateway see a gap and empty its cache instead.
                sequence = await self._feed.skip()
                log.error(
                    "unreadable revocation notice; gateways will empty their caches",
                    extra={"row_id": row_id, "sequence": sequence},
                )
            else:
                await self._feed.publish(payload)
        except Exception as error:
            log.warning(
                "could not publish a revocation; will retry",
                extra={"error": type(error).__name__},
            )
            return False
        return True

    def _readable(self, raw: str) -> dict[str, Any] | None:
        """The payload a row holds, or None if it cannot be read (e.g. a newer format)."""
        try:
            payload = json.loads(raw)
            if not isinstance(payload, dict):
                return None
            if self._validate is not None:
                self._validate(payload)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return payload

    async def beat(self) -> bool:
        """Sends one heartbeat if the outbox is drained; returns whether one was sent."""
        try:
            if not await self.relay_once():
                return False
            await self._feed.heartbeat()
        except Exception as error:
            log.warning("revocation heartbeat failed", extra={"error": type(error).__name__})
            return False
        return True

    async def run(self) -> None:
        """Relays and beats until cancelled: woken by notify(), and at least every
        heartbeat_seconds (wall time: heartbeats are a liveness signal between processes)."""
        last_beat = float("-inf")
        while True:
            if time.monotonic() - last_beat >= self._heartbeat_seconds:
                if await self.beat():
                    last_beat = time.monotonic()
            else:
                with contextlib.suppress(Exception):
                    await self.relay_once()
            wait = max(0.0, last_beat + self._heartbeat_seconds - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait or self._heartbeat_seconds):
                    await self._outbox.wait()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with running_in_background(self.run(), name="palisade-revocation-relay"):
            yield


async def _take_turn(conn: AsyncConnection, lock_key: int, wait_ms: int) -> bool:
    """Waits up to wait_ms for the relay lock, held until this transaction ends."""
    await conn.execute(text(f"SET LOCAL lock_timeout = '{int(wait_ms)}ms'"))
    try:
        await conn.execute(select(func.pg_advisory_xact_lock(lock_key)))
    except DBAPIError as error:
        if getattr(error.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            return False
        raise
    return True
