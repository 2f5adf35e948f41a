"""Clock skew between gateway replicas must not hand out bursts (a review finding).

A drained bucket is stored at `now_writer + tau + T`. An earlier rule read any stored TAT
beyond `now + tau + T` as a full bucket, so a replica whose clock was behind the writer by a
few milliseconds (ordinary NTP skew) read every drained bucket as full and admitted a whole
new burst. SECURITY.md 48: per-key and per-user limits hold exactly across two gateway
replicas sharing Redis. Now such a TAT reads as drained on the reader's clock.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from palisade.common.clock import ManualClock
from palisade.gateway.rate_limit import Limit, LocalRateLimiter, RedisRateLimiter, Subject
from palisade.gateway.rate_limit.resp_client import RespClient

pytestmark = [pytest.mark.redis]


async def test_replica_10ms_behind_grants_a_second_full_burst(redis_url: str) -> None:
    ahead = ManualClock()
    behind = ManualClock(ahead.now() - timedelta(milliseconds=10))  # 10 ms of NTP skew
    redis = RespClient.from_url(redis_url)
    try:
        one = RedisRateLimiter(redis, clock=ahead)
        two = RedisRateLimiter(redis, clock=behind)
        subject = (Subject("key", "key:review-skew", Limit(60, 5)),)
        first = [(await one.check(subject)).allowed for _ in range(5)]
        assert first == [True] * 5
        assert not (await one.check(subject)).allowed  # the burst is spent
        # 1 ms of real time later, the other replica (10 ms behind) is asked.
        ahead.advance(0.001)
        behind.advance(0.001)
        second = [(await two.check(subject)).allowed for _ in range(5)]
        # A limit of burst 5 / 60 per minute must admit nothing more this second.
        assert second == [False] * 5, f"replica behind by 10 ms admitted {second.count(True)}"
    finally:
        await redis.aclose()


async def test_burst_one_limit_is_not_enforced_at_all_by_a_lagging_replica(
    redis_url: str,
) -> None:
    ahead = ManualClock()
    behind = ManualClock(ahead.now() - timedelta(milliseconds=5))
    redis = RespClient.from_url(redis_url)
    try:
        one = RedisRateLimiter(redis, clock=ahead)
        two = RedisRateLimiter(redis, clock=behind)
        subject = (Subject("user", "user:review-skew", Limit(1, 1)),)  # one a minute
        admitted = 0
        for _ in range(10):  # alternate replicas, as a load balancer does
            admitted += (await one.check(subject)).allowed
            admitted += (await two.check(subject)).allowed
            ahead.advance(0.0001)
            behind.advance(0.0001)
        assert admitted == 1, f"a 1/min limit admitted {admitted} requests in 2 ms"
    finally:
        await redis.aclose()


async def test_local_limiter_wall_clock_stepping_back_a_millisecond_refills() -> None:
    """The same rule in process: a wall clock stepped back 1 ms (NTP step) refills a bucket."""
    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock)
    subject = (Subject("key", "key:x", Limit(60, 3)),)
    assert [(await limiter.check(subject)).allowed for _ in range(3)] == [True] * 3
    clock.set(clock.now() - timedelta(milliseconds=1))
    assert not (await limiter.check(subject)).allowed
