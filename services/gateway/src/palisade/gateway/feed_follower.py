"""Following a numbered revocation feed, and knowing when it can no longer be trusted.

A cache fed by a revocation feed (auth's WatchRevocations, apikeys' for keys) is trusted only
while the feed is known to be complete: the stream is subscribed, a heartbeat has been heard
within the deadline (about 2 s; services beat every 0.5 s), and every notice's sequence number
followed the last. A reconnect, a sequence gap, a heartbeat naming a notice never received, or
a silent stream (a half-open connection looks alive forever otherwise) resets the cache, and
nothing is trusted again until the feed has caught up (resubscribed and a heartbeat heard). So
a missed revocation can never outlive the heartbeat deadline.

The stream's messages need two fields: `heartbeat` (bool) and `sequence` (int); what a notice
revokes is the on_notice callback's business.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from palisade.common.clock import Clock
from palisade.common.revocation_feed import SUBSCRIBED_METADATA

log = logging.getLogger("palisade.gateway.feed")
_RECONNECT_SECONDS = 0.5
# How often (wall time) a quiet stream is checked against the heartbeat deadline, which is
# itself measured on the injectable clock.
_WATCH_SECONDS = 0.25


class FeedLost(Exception):
    """The revocation feed can no longer be trusted to be complete."""


class FeedFollower:
    def __init__(
        self,
        *,
        name: str,
        open_stream: Callable[[], Any],
        on_notice: Callable[[Any], None],
        on_reset: Callable[[], None],
        clock: Clock,
        heartbeat_deadline_seconds: float = 2.0,
    ) -> None:
        """open_stream: starts the server-streaming call (a grpc.aio call, fresh metadata per
        call); on_notice: applies one notice to the cache; on_reset: empties the cache (when
        the feed is lost, and again on catching up, so that nothing learnt before counts)."""
        self._name = name
        self._open_stream = open_stream
        self._on_notice = on_notice
        self._on_reset = on_reset
        self._clock = clock
        self._deadline = heartbeat_deadline_seconds
        self._caught_up = False
        self._sequence: int | None = None  # the last notice number seen on this stream
        self._heard_at = float("-inf")  # when the stream last said anything (clock seconds)
        self._lost = asyncio.Event()  # set when the cache stopped trusting the stream

    @property
    def caught_up(self) -> bool:
        """Subscribed and a heartbeat heard (the deadline is checked by trusted())."""
        return self._caught_up

    def _overdue(self) -> bool:
        # The clock is the wall clock: stepped back (NTP, a resumed VM), the time since the
        # last word is negative and would stay under the deadline for as long as the step.
        # Not knowing how long the stream has been silent, trust ends as if overdue.
        silent = self._clock.timestamp() - self._heard_at
        return silent < 0 or silent > self._deadline

    def trusted(self) -> bool:
        """Whether the cache may answer; a missed heartbeat deadline ends the trust."""
        if not self._caught_up:
            return False
        if self._overdue():
            log.warning("%s feed silent past its deadline; cache cleared", self._name)
            self.lose()
            return False
        return True

    def lose(self) -> None:
        """Stops trusting the stream: the cache is reset and follow() reconnects."""
        self._caught_up = False
        self._sequence = None
        self._on_reset()
        self._lost.set()

    def receive(self, message: Any) -> None:
        """Applies one stream message; raises FeedLost when a notice may have been missed."""
        self._heard_at = self._clock.timestamp()
        if message.heartbeat:
            if self._sequence is None:  # the first heartbeat since subscribing: caught up
                self._sequence = message.sequence
                # A reset here bumps the cache's generation: a validation that started before
                # now (when notices could still be missed) must not cache its answer.
                self._on_reset()
                self._caught_up = True
            elif message.sequence != self._sequence:
                # Ahead: a notice never arrived. Behind: the sequence restarted (Redis lost it).
                raise FeedLost("heartbeat does not match the notices received")
            return
        self._on_notice(message)
        if self._sequence is None:
            return  # not caught up yet: the first heartbeat sets the position
        if message.sequence > self._sequence + 1:
            raise FeedLost("sequence gap")
        # One behind or less is a repeat (delivery is at-least-once): evicted again, harmless.
        self._sequence = max(self._sequence, message.sequence)

    async def follow(self) -> None:
        """Applies the feed as the service announces it; runs until cancelled."""
        while True:
            call: Any = None
            try:
                call = self._open_stream()
                # The service says so once it has subscribed: from then on nothing is missed.
                # (A call that failed early also returns initial metadata, just without it.)
                metadata: Any = await call.initial_metadata()
                if SUBSCRIBED_METADATA not in tuple(metadata or ()):
                    raise ConnectionError(f"{self._name} feed did not confirm the subscription")
                self._lost.clear()
                self._heard_at = self._clock.timestamp()  # the heartbeat deadline starts now
                stream = call.__aiter__()
                while True:
                    self.receive(await self._next_message(stream))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: forget everything, reconnect
                log.warning(
                    "%s feed lost; cache cleared",
                    self._name,
                    extra={"error": type(exc).__name__},
                )
            finally:
                if call is not None and hasattr(call, "cancel"):
                    call.cancel()
            self.lose()
            await asyncio.sleep(_RECONNECT_SECONDS)

    async def _next_message(self, stream: Any) -> Any:
        """The stream's next message; FeedLost if it ends, stays silent past the heartbeat
        deadline, or the cache gave up on it meanwhile (a lookup saw the deadline pass)."""
        message = asyncio.ensure_future(anext(stream))
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            while True:
                done, _ = await asyncio.wait(
                    {message, lost}, timeout=_WATCH_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if message in done:
                    try:
                        return message.result()
                    except StopAsyncIteration:
                        raise FeedLost(f"{self._name} stream ended") from None
                if lost in done:
                    raise FeedLost("cache stopped trusting the stream")
                if self._overdue():
                    raise FeedLost("no heartbeat within the deadline")
        finally:
            for task in (message, lost):
                if not task.done():
                    task.cancel()
