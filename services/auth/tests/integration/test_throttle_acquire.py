"""acquire() is one atomic check-and-count, on Redis and in process: a burst of parallel
attempts gets exactly `limit` through, never more (the race a check-then-count would lose)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from palisade.auth.errors import Throttled
from palisade.auth.throttle import (
    Counter,
    CounterLimiter,
    FailureCounts,
    MemoryFailureCounts,
    RedisFailureCounts,
)
from palisade.common.clock import ManualClock


@pytest.fixture(params=["memory", "redis"])
async def counts(request, redis_url: str) -> AsyncIterator[FailureCounts]:
    if request.param == "memory":
        yield MemoryFailureCounts()
        return
    redis = Redis.from_url(redis_url)
    try:
        yield RedisFailureCounts(redis)
    finally:
        await redis.aclose()


async def test_a_parallel_burst_gets_exactly_the_limit_through(counts: FailureCounts) -> None:
    limiter = CounterLimiter(counts=counts, clock=ManualClock())
    counters = [Counter("burst:user", 10, 900), Counter("burst:ip", 1000, 900)]

    async def attempt() -> bool:
        try:
            await limiter.acquire(counters)
        except Throttled:
            return False
        return True

    results = await asyncio.gather(*(attempt() for _ in range(60)))
    assert results.count(True) == 10
    # A refused attempt counted nothing anywhere: the IP counter saw exactly the 10.
    assert (await counts.read(["burst:ip"]))[0][0] == 10


async def test_refusal_carries_the_wait_and_the_window_reopens(counts: FailureCounts) -> None:
    clock = ManualClock()
    limiter = CounterLimiter(counts=counts, clock=clock)
    counters = [Counter("wait:user", 2, 100)]
    await limiter.acquire(counters)
    await limiter.acquire(counters)
    clock.advance(40)
    with pytest.raises(Throttled) as refused:
        await limiter.acquire(counters)
    assert refused.value.retry_after_seconds == 60
    clock.advance(60)
    await limiter.acquire(counters)


async def test_give_back_returns_one_attempt_and_never_goes_below_zero(
    counts: FailureCounts,
) -> None:
    limiter = CounterLimiter(counts=counts, clock=ManualClock())
    counters = [Counter("back:ip", 2, 100)]
    await limiter.acquire(counters)
    await limiter.acquire(counters)
    await limiter.give_back(counters)
    await limiter.acquire(counters)  # room for one again
    with pytest.raises(Throttled):
        await limiter.acquire(counters)
    await counts.clear(["back:ip"])
    await limiter.give_back(counters)
    assert (await counts.read(["back:ip"]))[0][0] == 0
