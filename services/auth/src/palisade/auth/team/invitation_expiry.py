"""Erases the sealed addresses of invitations that expired unaccepted.

An invitee has no account, so their address is sealed under no subject key and no account
deletion would ever reach it (team/invitation_records.py). Once the invitation has expired
(revoked and replaced ones too: they carry the same expiry) nobody needs the address, and a
pass of this sweeper empties it, a bounded batch at a time; the list of invitations then shows
the expired invitation without an address. Every auth replica runs one; two passes at the same
time empty the same rows twice, which is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.auth.team.invitation_records import forget_expired_addresses
from palisade.common.clock import Clock
from palisade.common.relay_loop import Wakeup, relay_forever
from palisade.common.tasks import running_in_background

log = logging.getLogger("palisade.auth.invitation_expiry")


class ExpiredInvitationSweeper:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        clock: Clock,
        poll_seconds: float = 300.0,
        batch_size: int = 500,
    ) -> None:
        if poll_seconds <= 0 or batch_size < 1:
            raise ValueError("poll_seconds and batch_size must be > 0")
        self._engine = engine
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._wakeup = Wakeup()

    async def run_once(self) -> int:
        """Erases up to batch_size expired invitations' addresses; returns how many."""
        async with self._engine.begin() as conn:
            erased = await forget_expired_addresses(conn, self._clock.now(), limit=self._batch_size)
        if erased:
            log.info("expired invitations' addresses erased", extra={"invitations": erased})
        return erased

    async def _pass(self) -> bool:
        return await self.run_once() >= self._batch_size  # a full batch: more may be due

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        sweeper = relay_forever(
            self._pass,
            wakeup=self._wakeup,
            poll_seconds=self._poll_seconds,
            log=log,
            what="expired invitation sweep",
        )
        async with running_in_background(sweeper, name="palisade-invitation-expiry"):
            yield
