"""The in-process revocation feed (palisade.common.revocation_feed): numbered JSON payloads
fanned out to every subscriber, a stuck subscriber dropped rather than stalling the others."""

from __future__ import annotations

import asyncio

import pytest

from palisade.common import revocation_feed
from palisade.common.revocation_feed import FeedEvent, LocalRevocationFeed


def _payload(i: int) -> dict[str, object]:
    return {"k": [f"key_{i}"], "r": "revoked"}


async def _ended(stream) -> bool:
    try:
        await asyncio.wait_for(anext(stream), timeout=1)
    except StopAsyncIteration:
        return True
    return False


async def test_payloads_are_numbered_and_heartbeats_name_the_latest() -> None:
    feed = LocalRevocationFeed()
    async with feed.subscribe() as stream:
        await feed.heartbeat()
        assert await anext(stream) == FeedEvent(0)
        assert [await feed.publish(_payload(i)) for i in (1, 2)] == [1, 2]
        await feed.heartbeat()
        events = [await anext(stream) for _ in range(3)]
    assert events == [FeedEvent(1, _payload(1)), FeedEvent(2, _payload(2)), FeedEvent(2)]
    assert [e.heartbeat for e in events] == [False, False, True]


async def test_skip_uses_up_a_number_that_the_next_heartbeat_names() -> None:
    feed = LocalRevocationFeed()
    async with feed.subscribe() as stream:
        assert await feed.skip() == 1
        await feed.heartbeat()
        assert await anext(stream) == FeedEvent(1)  # a subscriber at 0 sees the gap
    assert feed.sequence == 1


async def test_every_subscriber_gets_everything_published_after_it_joined() -> None:
    feed = LocalRevocationFeed()
    await feed.publish(_payload(0))  # before anyone listened: nobody gets it
    async with feed.subscribe() as first, feed.subscribe() as second:
        for i in range(1, 4):
            await feed.publish(_payload(i))
        for stream in (first, second):
            assert [(await anext(stream)).payload for _ in range(3)] == [
                _payload(i) for i in range(1, 4)
            ]


async def test_a_stuck_subscriber_is_dropped_and_its_stream_ends(monkeypatch) -> None:
    monkeypatch.setattr(revocation_feed, "_QUEUE_LIMIT", 2)
    feed = LocalRevocationFeed()
    async with feed.subscribe() as stuck, feed.subscribe() as live:
        for i in range(4):
            await feed.publish(_payload(i))
            assert (await anext(live)).payload == _payload(i)
        assert await _ended(stuck)  # it reconnects instead of resuming with notices missing


async def test_a_subscriber_that_fails_still_leaves() -> None:
    feed = LocalRevocationFeed()
    with pytest.raises(RuntimeError):
        async with feed.subscribe() as stream:
            raise RuntimeError("gateway went away")
    await feed.publish(_payload(1))
    assert await _ended(stream)
