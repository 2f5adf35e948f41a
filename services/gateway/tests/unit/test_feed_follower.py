"""FeedFollower on its own: when a revocation feed is trusted, and what ends the trust.

Generic over the message (anything with `heartbeat` and `sequence`), so one follower serves
auth's token revocations and apikeys' key revocations. Time moves by ManualClock; follow()
runs against a fake streaming call, and the only real waits are for it to react.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from palisade.common.clock import ManualClock
from palisade.gateway import feed_follower
from palisade.gateway.feed_follower import FeedFollower, FeedLost

SUBSCRIBED = (("x-palisade-subscribed", "1"),)


@dataclass(frozen=True)
class Message:
    sequence: int
    heartbeat: bool = False
    revokes: str = ""


def beat(sequence: int) -> Message:
    return Message(sequence, heartbeat=True)


class FakeCall:
    """A server-streaming call: initial metadata, then whatever the test puts (None ends it)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...] = SUBSCRIBED) -> None:
        self.metadata = metadata
        self.messages: asyncio.Queue[Message | None] = asyncio.Queue()
        self.cancelled = False

    async def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def __aiter__(self):
        return self._stream()

    async def _stream(self):
        while (message := await self.messages.get()) is not None:
            yield message

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Cache:
    evicted: list[str] = field(default_factory=list)
    resets: int = 0


@pytest.fixture
def parts():
    clock = ManualClock()
    cache = Cache()
    calls: list[FakeCall] = []
    metadata = [SUBSCRIBED]

    def open_stream() -> FakeCall:
        calls.append(FakeCall(metadata[0]))
        return calls[-1]

    follower = FeedFollower(
        name="test",
        open_stream=open_stream,
        on_notice=lambda message: cache.evicted.append(message.revokes),
        on_reset=lambda: setattr(cache, "resets", cache.resets + 1),
        clock=clock,
        heartbeat_deadline_seconds=2.0,
    )
    return follower, cache, clock, calls, metadata


@pytest.fixture
def quick(monkeypatch) -> None:
    monkeypatch.setattr(feed_follower, "_RECONNECT_SECONDS", 0.0)
    monkeypatch.setattr(feed_follower, "_WATCH_SECONDS", 0.001)


async def _until(condition, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


# --- receive(): the rules, message by message -------------------------------------------------


def test_trusted_only_after_the_first_heartbeat_which_resets_the_cache(parts) -> None:
    follower, cache, *_ = parts
    assert not follower.caught_up
    assert not follower.trusted()
    follower.receive(Message(5, revokes="a"))  # before catching up: applied, position unknown
    assert cache.evicted == ["a"]
    assert not follower.trusted()
    follower.receive(beat(5))
    assert follower.caught_up
    assert follower.trusted()
    assert cache.resets == 1  # what was learnt before catching up does not count


def test_notices_in_order_and_repeats_keep_the_trust(parts) -> None:
    follower, cache, *_ = parts
    follower.receive(beat(0))
    for message in (Message(1, revokes="a"), Message(2, revokes="b"), Message(2, revokes="b")):
        follower.receive(message)
    follower.receive(beat(2))
    assert follower.trusted()
    assert cache.evicted == ["a", "b", "b"]  # a repeat is applied again: harmless


@pytest.mark.parametrize(
    "messages",
    [[Message(2, revokes="b")], [beat(1)], [Message(1), beat(0)]],
    ids=["skipped notice", "heartbeat ahead", "sequence restarted"],
)
def test_a_gap_or_a_mismatched_heartbeat_is_a_lost_feed(parts, messages) -> None:
    follower, cache, *_ = parts
    follower.receive(beat(0))
    *before, last = messages
    for message in before:
        follower.receive(message)
    with pytest.raises(FeedLost):
        follower.receive(last)
    if not messages[-1].heartbeat:
        assert cache.evicted == ["b"]  # the notice that revealed the gap is still applied


def test_silence_past_the_deadline_ends_the_trust_and_resets(parts) -> None:
    follower, cache, clock, *_ = parts
    follower.receive(beat(0))
    clock.advance(1.9)
    follower.receive(beat(0))  # in time: the deadline starts again
    clock.advance(1.9)
    assert follower.trusted()
    clock.advance(0.2)
    assert not follower.trusted()
    assert not follower.caught_up
    assert cache.resets == 2
    follower.receive(beat(0))  # caught up again only by a heartbeat after the loss
    assert follower.trusted()


def test_a_clock_stepped_back_ends_the_trust(parts) -> None:
    follower, _, clock, *_ = parts
    follower.receive(beat(0))
    clock.set(clock.now() - timedelta(hours=1))
    assert not follower.trusted()


# --- follow(): subscribing, losing, reconnecting ----------------------------------------------


async def test_follow_catches_up_applies_notices_and_reconnects_on_a_gap(parts, quick) -> None:
    follower, cache, _, calls, _ = parts
    task = asyncio.create_task(follower.follow())
    try:
        await _until(lambda: calls, "the subscription")
        calls[0].messages.put_nowait(beat(3))
        await _until(lambda: follower.caught_up, "catching up")
        calls[0].messages.put_nowait(Message(4, revokes="a"))
        await _until(lambda: cache.evicted == ["a"], "the notice")
        calls[0].messages.put_nowait(Message(6, revokes="c"))  # 5 never came
        await _until(lambda: len(calls) == 2, "the resubscription")
        assert calls[0].cancelled
        assert not follower.caught_up
        calls[1].messages.put_nowait(beat(6))
        await _until(lambda: follower.caught_up, "catching up again")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_unconfirmed_subscription_is_not_followed(parts, quick) -> None:
    follower, _, _, calls, metadata = parts
    metadata[0] = ()  # the call failed early: initial metadata without the confirmation
    task = asyncio.create_task(follower.follow())
    try:
        await _until(lambda: len(calls) >= 2, "a retry")
        calls[0].messages.put_nowait(beat(0))
        assert not follower.caught_up
        metadata[0] = SUBSCRIBED
        await _until(lambda: calls[-1].metadata == SUBSCRIBED, "a confirmed subscription")
        calls[-1].messages.put_nowait(beat(0))
        await _until(lambda: follower.caught_up, "catching up")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_ended_or_silent_stream_is_dropped_without_any_lookup(parts, quick) -> None:
    follower, cache, clock, calls, _ = parts
    task = asyncio.create_task(follower.follow())
    try:
        await _until(lambda: calls, "the subscription")
        calls[0].messages.put_nowait(beat(0))
        await _until(lambda: follower.caught_up, "catching up")
        calls[0].messages.put_nowait(None)  # the server ended the stream
        await _until(lambda: len(calls) == 2, "the resubscription")
        calls[1].messages.put_nowait(beat(0))
        await _until(lambda: follower.caught_up, "catching up")
        resets = cache.resets
        clock.advance(2.1)  # open but silent (half-open): the watchdog notices
        await _until(lambda: len(calls) == 3, "the watchdog")
        assert calls[1].cancelled
        assert cache.resets > resets
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_lookup_that_saw_the_deadline_pass_makes_follow_reconnect(parts, quick) -> None:
    follower, _, _, calls, _ = parts
    task = asyncio.create_task(follower.follow())
    try:
        await _until(lambda: calls, "the subscription")
        calls[0].messages.put_nowait(beat(0))
        await _until(lambda: follower.caught_up, "catching up")
        follower.lose()  # as trusted() does past the deadline
        await _until(lambda: len(calls) == 2, "the resubscription")
        assert calls[0].cancelled
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
