"""The loop every outbox relay runs: a pass, then a wait that a commit can cut short.

A relay (auth's key revocations and new-network alerts, and whatever delivers rows one at a
time) repeats one pass: claim due rows, deliver, settle. Between passes it waits for its poll
interval, unless woken: by notify() from any thread, or, with ring_on_checkin(), as soon as a
pooled connection whose transaction queued work goes back to the engine's pool (after its
commit; a rolled-back one wakes it for nothing, which is harmless). A pass that says more may
be due (a full batch that made progress) is followed at once by the next. No error ends the
loop: it is logged and the pass is tried again after the wait.

    wakeup = Wakeup()
    async with wakeup.ring_on_checkin(engine, WAKE_FLAG), running_in_background(
        relay_forever(relay.pass_once, wakeup=wakeup, poll_seconds=1.0, log=log, what="..."),
        name="palisade-...",
    ):
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class Wakeup:
    """A relay's doorbell."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self) -> None:
        """Wakes the relay now instead of at its next poll (any thread)."""
        if self._loop is None:
            self._event.set()
        else:
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, seconds: float) -> None:
        """Returns when notified or after `seconds`, whichever is first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()
        self._event.clear()

    @asynccontextmanager
    async def ring_on_checkin(self, engine: AsyncEngine, flag: str) -> AsyncIterator[None]:
        """For the block: a connection that comes back to the pool with `flag` set in its
        pool record's info (set by whoever queued work in its transaction) rings, and the flag
        is taken off."""
        self._loop = asyncio.get_running_loop()

        def on_checkin(_dbapi_connection: Any, record: Any) -> None:
            info = getattr(record, "info", None)
            if info is not None and info.pop(flag, False):
                self.notify()

        pool_events = engine.sync_engine
        event.listen(pool_events, "checkin", on_checkin)
        try:
            yield
        finally:
            event.remove(pool_events, "checkin", on_checkin)
            self._loop = None


async def relay_forever(
    pass_once: Callable[[], Awaitable[bool]],
    *,
    wakeup: Wakeup,
    poll_seconds: float,
    log: logging.Logger,
    what: str,
) -> None:
    """Runs pass_once until cancelled; it returns True when more may be due at once."""
    while True:
        more = False
        try:
            more = await pass_once()
        except Exception:
            # Database errors name tables and ids, never payloads.
            log.exception("%s pass failed; will retry", what)
        if not more:
            await wakeup.wait(poll_seconds)
