"""A gap-proof revocation feed at the edge (issue 9 item 6, SECURITY.md 24).

The cache may answer only while the feed is known complete: subscribed, a heartbeat heard
within the deadline (2 s here, on the injectable clock), and no notice number skipped.
Before: a validation that started while the feed was down was cached after the reconnect
(the generation moved on clear, not on reconnect), and a silent (half-open) stream kept the
cache trusted forever. Time moves by ManualClock; the only real waits are for an event
(a reconnect, a message) to arrive.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta

import pytest

from palisade.gateway import feed_follower
from palisade_api.auth.v1 import auth_pb2

from .conftest import TOKEN


@pytest.fixture(autouse=True)
def _reconnect_at_once(monkeypatch) -> None:
    monkeypatch.setattr(feed_follower, "_RECONNECT_SECONDS", 0.0)


async def _until(condition, what: str) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


async def _me(gateway) -> int:
    status, _, _ = await gateway.call("GET", "/v1/me", token=TOKEN)
    return status


async def _cached(gateway) -> None:
    """Signs TOKEN in and shows it is answered from the cache (auth asked once)."""
    gateway.auth.allow(TOKEN)
    before = len(gateway.auth.validations)
    assert await _me(gateway) == 200
    assert await _me(gateway) == 200
    assert len(gateway.auth.validations) == before + 1
    assert len(gateway.cache) == 1


def _asks_auth(gateway):
    count = len(gateway.auth.validations)
    return lambda: len(gateway.auth.validations) - count


async def test_a_validation_begun_while_the_feed_was_down_is_not_cached_after_reconnect(
    gateway,
) -> None:
    await _cached(gateway)
    gateway.auth.heartbeat_on_subscribe = False  # the new stream has not caught up yet
    gateway.auth.end_stream()
    await _until(lambda: len(gateway.auth.feeds) == 2, "the resubscription")
    assert len(gateway.cache) == 0
    assert not gateway.edge.feed_connected

    gateway.auth.hold = asyncio.Event()
    pending = asyncio.create_task(_me(gateway))  # auth looks TOKEN up: still valid
    await _until(lambda: len(gateway.auth.validations) == 2, "the lookup")
    # The logout commits now; its notice went out while this gateway was not subscribed.
    del gateway.auth.valid[TOKEN]
    gateway.auth.heartbeat()  # the feed catches up...
    await _until(lambda: gateway.edge.feed_connected, "catching up")
    gateway.auth.hold.set()
    assert await pending == 200  # ...the stale answer is served once...
    assert len(gateway.cache) == 0  # ...but never cached
    gateway.auth.hold = None
    assert await _me(gateway) == 401


async def test_a_reconnect_empties_the_cache(gateway) -> None:
    await _cached(gateway)
    gateway.auth.end_stream()
    await _until(lambda: len(gateway.auth.feeds) == 2, "the resubscription")
    await _until(lambda: gateway.edge.feed_connected, "catching up")
    asked = _asks_auth(gateway)
    assert await _me(gateway) == 200
    assert asked() == 1  # the cache was emptied: auth is asked again
    assert gateway.auth.feeds[0].cancelled


@pytest.mark.parametrize("how", ["skipped notice", "heartbeat ahead", "sequence restarted"])
async def test_a_sequence_gap_empties_the_cache_and_resubscribes(gateway, how) -> None:
    await _cached(gateway)
    gateway.auth.heartbeat_on_subscribe = False
    if how == "skipped notice":
        gateway.auth.sequence += 1  # notice 1 never reaches this gateway
        gateway.auth.revoke(sessions=["ses_someone_else"])  # notice 2
    elif how == "heartbeat ahead":
        gateway.auth.heartbeat(sequence=1)  # auth published 1, this gateway never got it
    else:
        gateway.auth.revoke(sessions=["ses_someone_else"])
        gateway.auth.heartbeat(sequence=0)  # Redis lost the counter: numbers went back
    await _until(lambda: len(gateway.auth.feeds) == 2, "the resubscription")
    assert len(gateway.cache) == 0
    assert not gateway.edge.feed_connected
    asked = _asks_auth(gateway)
    assert await _me(gateway) == 200
    assert await _me(gateway) == 200
    assert asked() == 2  # not caching until caught up
    gateway.auth.heartbeat()
    await _until(lambda: gateway.edge.feed_connected, "catching up")
    await _cached(gateway)


async def test_numbered_notices_in_order_and_repeats_keep_the_feed(gateway) -> None:
    await _cached(gateway)
    other = hashlib.sha256(b"another token").digest()
    gateway.auth.revoke(hashes=[other])  # 1
    gateway.auth.revoke(hashes=[other])  # 2
    gateway.auth.notices.put_nowait(auth_pb2.Revocation(sequence=2))  # a repeat (at-least-once)
    gateway.auth.heartbeat()  # names 2: all received
    await _until(lambda: gateway.auth.notices.empty(), "the messages")
    await asyncio.sleep(0)
    assert len(gateway.auth.feeds) == 1
    assert gateway.edge.feed_connected
    assert len(gateway.cache) == 1


async def test_a_missed_heartbeat_empties_the_cache_and_stops_caching_until_caught_up(
    gateway,
) -> None:
    await _cached(gateway)
    gateway.auth.heartbeat_on_subscribe = False
    gateway.clock.advance(1.9)
    gateway.auth.heartbeat()  # in time: the deadline starts again
    await _until(lambda: gateway.auth.notices.empty(), "the heartbeat")
    gateway.clock.advance(1.9)
    asked = _asks_auth(gateway)
    assert await _me(gateway) == 200
    assert asked() == 0
    gateway.clock.advance(0.2)  # 2.1 s without a word
    assert await _me(gateway) == 200
    assert asked() == 1  # the cache was emptied at this lookup...
    assert len(gateway.cache) == 0  # ...and the answer not cached
    await _until(lambda: len(gateway.auth.feeds) == 2, "the resubscription")
    assert await _me(gateway) == 200
    assert asked() == 2
    assert len(gateway.cache) == 0
    gateway.auth.heartbeat()
    await _until(lambda: gateway.edge.feed_connected, "catching up")
    assert await _me(gateway) == 200
    assert await _me(gateway) == 200
    assert asked() == 3  # caching again


async def test_a_silent_half_open_stream_is_dropped_without_any_request(gateway) -> None:
    await _cached(gateway)
    gateway.auth.heartbeat_on_subscribe = False
    gateway.clock.advance(2.1)  # the stream stays open but says nothing
    await _until(lambda: not gateway.edge.feed_connected, "the watchdog")
    assert len(gateway.cache) == 0
    await _until(lambda: len(gateway.auth.feeds) == 2, "the resubscription")
    assert gateway.auth.feeds[0].cancelled


async def test_a_wall_clock_stepped_back_does_not_stretch_the_heartbeat_deadline(gateway) -> None:
    """The deadline is measured on the wall clock: stepped back an hour (NTP, a VM resumed)
    just after the last heartbeat, a stream that then goes silent looked alive for that hour,
    and revoked tokens were served from the cache meanwhile. Before the fix the lookup below
    was answered from the cache (auth not asked)."""
    await _cached(gateway)
    gateway.auth.heartbeat_on_subscribe = False
    gateway.clock.set(gateway.clock.now() - timedelta(hours=1))
    gateway.clock.advance(2.1)  # and then the stream stays silent past the deadline
    asked = _asks_auth(gateway)
    assert await _me(gateway) == 200
    assert asked() == 1  # the cache is not trusted: auth is asked...
    assert len(gateway.cache) == 0  # ...and the answer not cached
    await _until(lambda: len(gateway.auth.feeds) == 2, "the resubscription")
    gateway.auth.heartbeat()
    await _until(lambda: gateway.edge.feed_connected, "catching up")
    await _cached(gateway)  # at the new time, the feed is trusted again
