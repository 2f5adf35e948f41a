"""acquire() is one atomic check-and-count, on Redis and in process: a burst of parallel
attempts gets exactly `limit` through, never more (the race a check-then-count would lose)."""

from __future__ import annotations

import asyncio
import uuid
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


async def test_acquire_waivable_leaves_out_the_waived_counter_only_for_a_known_client(
    counts: FailureCounts,
) -> None:
    """The look at the "known" record and the count are one step: while the record is active
    the waived counter is neither checked nor counted; once it lapses, it is both."""
    clock = ManualClock()
    limiter = CounterLimiter(counts=counts, clock=clock)
    tag = uuid.uuid4().hex
    known = Counter(f"waive:known:{tag}", 1, 50)
    account = Counter(f"waive:acct:{tag}", 1, 1000)
    ip = Counter(f"waive:ip:{tag}", 100, 1000)
    await limiter.acquire_waivable([account, ip], known=known, waived=account.key)
    with pytest.raises(Throttled):  # not known: the account's limit of one holds
        await limiter.acquire_waivable([account, ip], known=known, waived=account.key)
    assert (await counts.read([ip.key]))[0][0] == 1  # the refusal counted nothing
    await limiter.hit([known])
    for _ in range(3):  # known: the account counter is waived (and not counted)
        await limiter.acquire_waivable([account, ip], known=known, waived=account.key)
    assert [c for c, _ in await counts.read([account.key, ip.key])] == [1, 4]
    clock.advance(50)  # the record lapsed: the account's limit holds again
    with pytest.raises(Throttled):
        await limiter.acquire_waivable([account, ip], known=known, waived=account.key)


async def test_settle_clears_gives_back_and_counts_in_one_step(counts: FailureCounts) -> None:
    clock = ManualClock()
    limiter = CounterLimiter(counts=counts, clock=clock)
    tag = uuid.uuid4().hex
    cleared = [Counter(f"settle:a:{tag}", 10, 100), Counter(f"settle:b:{tag}", 10, 100)]
    given = Counter(f"settle:ip:{tag}", 10, 100)
    hit = Counter(f"settle:known:{tag}", 1, 30)
    for _ in range(3):
        await limiter.acquire([*cleared, given])
    await limiter.settle(clear=cleared, give_back=[given], hit=[hit])
    keys = [c.key for c in [*cleared, given, hit]]
    assert [c for c, _ in await counts.read(keys)] == [0, 0, 2, 1]
    clock.advance(30)  # past its window, a hit starts the count afresh
    await limiter.settle(clear=[], give_back=[], hit=[hit])
    assert (await counts.read([hit.key]))[0] == (1, clock.timestamp())
