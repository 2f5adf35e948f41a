"""The revocation feed (SECURITY.md 24): exact JSON round-trip, and the in-process fan-out
seen through auth's notice adapter (the generic feed: libs/common/tests)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from palisade.auth.sessions import revocation
from palisade.auth.sessions.revocation import LocalRevocationFeed, RevocationNotice
from palisade.common import revocation_feed as common_feed

WHEN = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


def _notice(i: int = 0, **overrides) -> RevocationNotice:
    fields = {
        "access_token_hashes": (
            hashlib.sha256(f"a{i}".encode()).digest(),
            hashlib.sha256(f"b{i}".encode()).digest(),
        ),
        "session_ids": (f"ses_{i}", f"ses_{i}_2"),
        "user_id": f"usr_{i}",
        "reason": "logout",
        "revoked_at": WHEN + timedelta(microseconds=i),
    }
    fields.update(overrides)
    return RevocationNotice(**fields)


async def _next(stream):
    """The next notice (its FeedEvent's), checking that it is numbered."""
    event = await asyncio.wait_for(anext(stream), timeout=1)
    assert event.sequence >= 1
    assert event.notice is not None
    return event.notice


async def _ended(stream) -> bool:
    try:
        await asyncio.wait_for(anext(stream), timeout=1)
    except StopAsyncIteration:
        return True
    return False


# --- JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "notice",
    [
        _notice(),
        _notice(access_token_hashes=(), session_ids=()),
        _notice(access_token_hashes=(b"\x00" * 32, b"\xff" * 32, b"")),
        _notice(user_id="usr_\u00e9\U0001f511", reason='quote " backslash \\ newline \n'),
        _notice(revoked_at=datetime(2026, 1, 1, tzinfo=UTC)),
        _notice(revoked_at=datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))),
        _notice(session_ids=tuple(f"ses_{i}" for i in range(1000))),
    ],
    ids=["typical", "empty", "edge-bytes", "odd-strings", "no-micros", "offset", "many"],
)
def test_json_round_trip_is_exact(notice) -> None:
    text = notice.to_json()
    again = RevocationNotice.from_json(text)
    assert again == notice
    assert type(again.access_token_hashes) is tuple
    assert type(again.session_ids) is tuple
    assert all(type(h) is bytes for h in again.access_token_hashes)
    assert again.revoked_at.utcoffset() == notice.revoked_at.utcoffset()
    assert RevocationNotice.from_json(text.encode()) == notice
    assert again.to_json() == text


def test_json_is_compact_and_carries_no_raw_bytes() -> None:
    notice = _notice()
    doc = json.loads(notice.to_json())
    assert doc == {
        "h": [h.hex() for h in notice.access_token_hashes],
        "s": ["ses_0", "ses_0_2"],
        "u": "usr_0",
        "r": "logout",
        "t": "2026-03-04T05:06:07.891011+00:00",
    }


def test_the_round_trip_preserves_the_instant() -> None:
    notice = _notice()
    assert RevocationNotice.from_json(notice.to_json()).revoked_at.timestamp() == (
        notice.revoked_at.timestamp()
    )


# --- the local fan-out -----------------------------------------------------------------------


async def test_publish_without_subscribers_is_fine() -> None:
    await LocalRevocationFeed().publish(_notice())


async def test_every_subscriber_gets_every_notice_in_order() -> None:
    feed = LocalRevocationFeed()
    notices = [_notice(i) for i in range(50)]
    async with feed.subscribe() as first, feed.subscribe() as second, feed.subscribe() as third:
        for notice in notices:
            await feed.publish(notice)
        for stream in (first, second, third):
            assert [await _next(stream) for _ in notices] == notices


async def test_a_waiting_subscriber_is_woken_by_a_publish() -> None:
    feed = LocalRevocationFeed()
    async with feed.subscribe() as stream:
        waiting = asyncio.ensure_future(_next(stream))
        await asyncio.sleep(0)  # let it block on the empty queue (no time passes)
        assert not waiting.done()
        await feed.publish(_notice(7))
        assert await waiting == _notice(7)


async def test_a_subscriber_sees_only_notices_published_after_it_joined() -> None:
    feed = LocalRevocationFeed()
    await feed.publish(_notice(1))
    async with feed.subscribe() as stream:
        await feed.publish(_notice(2))
        assert await _next(stream) == _notice(2)


async def test_nothing_reaches_a_subscriber_after_it_leaves() -> None:
    feed = LocalRevocationFeed()
    async with feed.subscribe() as stays:
        async with feed.subscribe() as leaves:
            await feed.publish(_notice(1))
            assert await _next(leaves) == _notice(1)
        await feed.publish(_notice(2))
        assert await _ended(leaves)
        assert await _next(stays) == _notice(1)
        assert await _next(stays) == _notice(2)


async def test_a_subscriber_that_fails_still_leaves() -> None:
    feed = LocalRevocationFeed()
    with pytest.raises(RuntimeError):
        async with feed.subscribe() as stream:
            raise RuntimeError("gateway went away")
    await feed.publish(_notice(1))
    assert await _ended(stream)


async def test_a_stuck_subscriber_is_dropped_without_blocking_the_others() -> None:
    limit = common_feed._QUEUE_LIMIT
    feed = LocalRevocationFeed()
    async with feed.subscribe() as stuck, feed.subscribe() as live:
        notices = [_notice(i) for i in range(limit + 5)]

        async def publish_all() -> list[RevocationNotice]:
            # `stuck` never reads; `live` reads every notice as it comes.
            received = []
            for notice in notices:
                await feed.publish(notice)
                received.append((await anext(live)).notice)
            return received

        assert await asyncio.wait_for(publish_all(), timeout=10) == notices
        # The stuck subscriber learns that it was dropped (its stream ends) instead of
        # silently resuming with notices missing.
        assert await _ended(stuck)
        await feed.publish(_notice(limit + 5))
        assert await _next(live) == _notice(limit + 5)


async def test_a_slow_subscriber_under_the_limit_is_kept(monkeypatch) -> None:
    monkeypatch.setattr(common_feed, "_QUEUE_LIMIT", 3)
    feed = LocalRevocationFeed()
    async with feed.subscribe() as slow:
        for i in range(3):
            await feed.publish(_notice(i))
        assert [await _next(slow) for _ in range(3)] == [_notice(i) for i in range(3)]
        await feed.publish(_notice(3))
        assert await _next(slow) == _notice(3)


async def test_a_dropped_subscriber_gets_nothing_more(monkeypatch) -> None:
    monkeypatch.setattr(common_feed, "_QUEUE_LIMIT", 2)
    feed = LocalRevocationFeed()
    async with feed.subscribe() as stuck, feed.subscribe() as live:
        for i in range(4):
            await feed.publish(_notice(i))
            assert await _next(live) == _notice(i)
        assert await _ended(stuck)
        assert await _ended(stuck)


# --- sequence numbers and heartbeats (issue 9 item 6) -----------------------------------------


async def test_notices_are_numbered_in_order_and_heartbeats_name_the_latest() -> None:
    feed = LocalRevocationFeed()
    async with feed.subscribe() as stream:
        await feed.heartbeat()
        assert await anext(stream) == revocation.FeedEvent(0)
        for i in range(1, 4):
            assert await feed.publish(_notice(i)) == i
        await feed.heartbeat()
        events = [await anext(stream) for _ in range(4)]
    assert [(e.sequence, e.heartbeat) for e in events] == [
        (1, False),
        (2, False),
        (3, False),
        (3, True),
    ]
    assert [e.notice for e in events[:3]] == [_notice(i) for i in range(1, 4)]


async def test_notices_travel_as_their_json_payload() -> None:
    # The payload is to_dict(): what the outbox stores and Redis carries, unchanged by the
    # move to the common feed (replicas of two versions share a channel during a deploy).
    feed = LocalRevocationFeed()
    async with feed._feed.subscribe() as raw, feed.subscribe() as typed:
        await feed.publish(_notice(1))
        assert await anext(raw) == common_feed.FeedEvent(1, _notice(1).to_dict())
        assert await anext(typed) == revocation.FeedEvent(1, _notice(1))
        assert await feed.skip() == 2
        assert feed.sequence == 2
