"""Auth's revocation outbox: RevocationNotice rows, relayed to auth's revocation feed.

The outbox and its relay (a notice commits with its revocation; the relay publishes rows in
order, retries what failed, skips what cannot be read, beats only when drained, and takes
turns across replicas by a Postgres advisory lock) are palisade.common.revocation_outbox,
shared with the apikeys service. This module binds them to auth: its table (migration 0005,
whose columns the common table repeats), its lock key, notices instead of payloads on the way
in, and a check that each row reads as a notice on the way out (the relay publishes the
payload itself to the common feed under auth's notice feed).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.auth.sessions.revocation import RevocationFeed, RevocationNotice
from palisade.auth.store import AuthTransaction, metadata
from palisade.common import revocation_outbox as common
from palisade.common.clock import Clock

# pg_try_advisory_xact_lock key that serialises relay passes across replicas (any fixed
# 64-bit number that no other lock in this database uses: "palisade revocation relay").
_RELAY_LOCK_KEY = 0x7061_6C69_7265_7631

revocation_outbox = common.revocation_outbox_table(metadata)


class RevocationOutbox:
    """Adds notices to the caller's transaction; the relay publishes them after commit.

    async with store.transaction() as tx:
        ...                                    # the revocation
        await outbox.enqueue(tx, notice)
    outbox.notify()                            # after commit: wake this process's relay
    """

    def __init__(self, *, clock: Clock) -> None:
        self.payloads = common.RevocationOutbox(table=revocation_outbox, clock=clock)

    async def enqueue(self, tx: AuthTransaction, notice: RevocationNotice) -> None:
        await self.payloads.enqueue(tx.conn, notice.to_dict())

    def notify(self) -> None:
        """Wakes this process's relay now instead of at its next pass; call after commit."""
        self.payloads.notify()

    async def wait(self) -> None:
        await self.payloads.wait()


class RevocationRelay(common.RevocationRelay):
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        feed: RevocationFeed,
        outbox: RevocationOutbox,
        heartbeat_seconds: float = 0.5,
        batch_size: int = 100,
        turn_wait_ms: int = 1000,
    ) -> None:
        super().__init__(
            engine=engine,
            # Outbox rows are notices' to_dict() payloads: they go to the common feed as they
            # are, once validate has read them as notices.
            feed=feed.payloads,
            outbox=outbox.payloads,
            lock_key=_RELAY_LOCK_KEY,
            heartbeat_seconds=heartbeat_seconds,
            batch_size=batch_size,
            turn_wait_ms=turn_wait_ms,
            # A row this version cannot turn into a notice is skipped (a gap), not retried.
            validate=RevocationNotice.from_dict,
        )
