"""The in-process rate limiter and the header fields: GCRA exactness, all-or-nothing over the
key and the user, refill with a manual clock, bounded memory, and the draft's field syntax.

The same scenarios run against Redis in tests/integration/test_rate_limit_redis.py, which also
drives both limiters with one clock and compares every decision.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from palisade.common.clock import ManualClock
from palisade.gateway.rate_limit import (
    Decision,
    Limit,
    LocalRateLimiter,
    RateLimiterUnavailable,
    Subject,
    rate_limit_headers,
)


def key(name: str, rpm: int, burst: int | None = None) -> Subject:
    return Subject("key", f"key:{name}", Limit(rpm, rpm if burst is None else burst))


def user(name: str, rpm: int, burst: int | None = None) -> Subject:
    return Subject("user", f"user:{name}", Limit(rpm, rpm if burst is None else burst))


async def admitted(limiter: LocalRateLimiter, subjects: list[Subject], times: int) -> int:
    results = await asyncio.gather(*(limiter.check(subjects) for _ in range(times)))
    return sum(d.allowed for d in results)


# --- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rpm", "burst"),
    [(0, 1), (1, 0), (-5, 3), (3, -1), (True, 1), (1, True), (1.5, 1), (60_000_001, 1), (1, 10**7)],
)
def test_a_bad_limit_is_refused_at_construction(rpm: object, burst: object) -> None:
    with pytest.raises(ValueError):
        Limit(rpm, burst)  # type: ignore[arg-type]


def test_the_emission_interval_is_rounded_up_never_down() -> None:
    assert Limit(60, 5).interval_us == 1_000_000
    assert Limit(7, 1).interval_us == 8_571_429  # 8_571_428.57...: never faster than asked
    assert Limit(7, 3).tolerance_us == 2 * 8_571_429


@pytest.mark.parametrize("name", ["", "Key", "key id", 'k"ey', "key;q=1", "k" * 65, "1key"])
def test_a_policy_name_is_a_lowercase_token(name: str) -> None:
    with pytest.raises(ValueError):
        Subject(name, "key:1", Limit(1, 1))


async def test_a_check_names_at_least_one_subject_each_once() -> None:
    limiter = LocalRateLimiter(clock=ManualClock())
    with pytest.raises(ValueError):
        await limiter.check([])
    with pytest.raises(ValueError):
        await limiter.check([key("a", 5), key("a", 5)])


# --- exactness ------------------------------------------------------------------------------


async def test_a_limit_of_n_admits_exactly_n_of_200_parallel_checks() -> None:
    limiter = LocalRateLimiter(clock=ManualClock())
    assert await admitted(limiter, [key("a", 100, 37)], 200) == 37


async def test_two_keys_of_one_user_share_the_users_limit() -> None:
    limiter = LocalRateLimiter(clock=ManualClock())
    alice = user("alice", 15)
    a, b = key("a", 10), key("b", 10)
    results = await asyncio.gather(*(limiter.check([k, alice]) for _ in range(20) for k in (a, b)))
    assert sum(d.allowed for d in results) == 15
    refused = [d for d in results if not d.allowed]
    assert {d.policy.name for d in refused} == {"user"}
    # A refusal by the user spent nothing of the keys': together they spent exactly the 15
    # admitted, so used alone they have exactly 20 - 15 left.
    used = {
        k.id: sum(d.allowed for d, s in zip(results, [a, b] * 20, strict=True) if s == k)
        for k in (a, b)
    }
    assert sum(used.values()) == 15
    assert await admitted(limiter, [a], 20) == 10 - used[a.id]
    assert await admitted(limiter, [b], 20) == 10 - used[b.id]


async def test_when_the_user_refuses_the_keys_remaining_is_unchanged() -> None:
    limiter = LocalRateLimiter(clock=ManualClock())
    k, u = key("a", 10), user("alice", 60, 1)
    first = await limiter.check([k, u])
    assert first.allowed
    assert first.policy == u
    assert first.remaining == 0
    for _ in range(5):
        refused = await limiter.check([k, u])
        assert not refused.allowed
        assert refused.policy == u
    alone = await limiter.check([k])
    assert alone.allowed
    assert alone.remaining == 8


async def test_when_the_key_refuses_the_users_remaining_is_unchanged() -> None:
    limiter = LocalRateLimiter(clock=ManualClock())
    k, u = key("a", 60, 2), user("alice", 600, 100)
    assert await admitted(limiter, [k, u], 10) == 2
    alone = await limiter.check([u])
    assert alone.remaining == 97


async def test_refill_one_interval_admits_one_more_and_retry_after_is_exact() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock)
    k = key("a", 6, 3)  # one every 10 s, three at once
    assert await admitted(limiter, [k], 3) == 3
    refused = await limiter.check([k])
    assert (refused.allowed, refused.remaining, refused.retry_after_seconds) == (False, 0, 10)
    assert refused.reset_seconds == 30
    clock.advance(3.5)
    refused = await limiter.check([k])
    assert refused.retry_after_seconds == 7  # 6.5 s rounded up
    assert refused.reset_seconds == 27
    clock.advance(6.499999)
    assert not (await limiter.check([k])).allowed  # 1 us early
    clock.advance(0.000001)
    again = await limiter.check([k])
    assert (again.allowed, again.remaining, again.retry_after_seconds) == (True, 0, 0)
    assert not (await limiter.check([k])).allowed
    clock.advance(30)
    full = await limiter.check([k])
    assert (full.allowed, full.remaining, full.reset_seconds) == (True, 2, 10)


async def test_idle_time_never_banks_more_than_the_burst() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock)
    k = key("a", 60, 5)
    await limiter.check([k])
    clock.advance(3600)
    assert await admitted(limiter, [k], 50) == 5


async def test_a_steady_client_at_the_rate_is_never_refused() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock)
    k = key("a", 120, 1)  # one every 0.5 s, no burst
    for _ in range(100):
        assert (await limiter.check([k])).allowed
        clock.advance(0.5)


async def test_the_decision_describes_the_most_constrained_or_the_refusing_subject() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock)
    k, u = key("a", 100, 10), user("alice", 60, 3)
    decision = await limiter.check([k, u])
    assert (decision.policy, decision.remaining, decision.reset_seconds) == (u, 2, 1)
    assert decision.subjects == (k, u)
    await limiter.check([k, u])
    await limiter.check([k, u])
    refused = await limiter.check([k, u])
    assert (refused.policy, refused.retry_after_seconds, refused.reset_seconds) == (u, 1, 3)
    # Both refuse: the longer wait is the one the client must honour.
    slow = key("slow", 1, 1)
    await limiter.check([slow])
    both = await limiter.check([slow, u])
    assert (both.policy, both.retry_after_seconds) == (slow, 60)


# --- memory ---------------------------------------------------------------------------------


async def test_full_buckets_are_dropped_and_busy_ones_never_are() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock, max_subjects=3)
    a, b, c, d = (key(n, 60, 5) for n in "abcd")
    for k in (a, b, c):
        await limiter.check([k])
    assert len(limiter) == 3
    # Every held bucket is mid-refill: forgetting one would hand it a full bucket again.
    with pytest.raises(RateLimiterUnavailable):
        await limiter.check([d])
    assert len(limiter) == 3
    # A refusal needs no room: the state of a refused subject does not change.
    await limiter.check([a])
    await limiter.check([a])
    await limiter.check([a])
    await limiter.check([a])
    assert not (await limiter.check([a])).allowed
    clock.advance(1)  # b and c are full again (one spent, one second): dropped; a is not
    assert (await limiter.check([d])).allowed
    assert len(limiter) == 2
    assert (await limiter.check([a])).remaining == 0  # a kept its state: one refilled, one spent


async def test_the_table_holds_only_subjects_whose_bucket_is_not_full() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock, max_subjects=10)
    for round_ in range(50):
        for i in range(10):
            assert (await limiter.check([key(f"{round_}-{i}", 60, 2)])).allowed
        clock.advance(1)
    assert len(limiter) == 10
    clock.advance(1)
    await limiter.check([key("last", 60, 2)])
    assert len(limiter) == 1


async def test_many_writes_to_one_subject_keep_memory_bounded() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock)
    k = key("hot", 60_000_000, 1_000_000)
    for _ in range(5000):
        await limiter.check([k])
    assert len(limiter._expiries) <= 2 * len(limiter) + 1024


# --- headers --------------------------------------------------------------------------------

# RFC 9651 List of Items whose bare item is a String and whose parameters are Integers: the
# shape draft-ietf-httpapi-ratelimit-headers-11 gives both fields (sections 3 and 4).
_KEY = r"[a-z*][a-z0-9_.*-]*"
_ITEM = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"(?:;{_KEY}=-?[0-9]{{1,15}})*'
_LIST = re.compile(rf"{_ITEM}(?:[ \t]*,[ \t]*{_ITEM})*")


def sf_items(value: str) -> list[tuple[str, dict[str, int]]]:
    assert _LIST.fullmatch(value), value
    items = []
    for member in re.split(r"[ \t]*,[ \t]*", value):
        name, *params = member.split(";")
        items.append((name.strip('"'), {p.split("=")[0]: int(p.split("=")[1]) for p in params}))
    return items


@pytest.mark.parametrize(
    "example",
    [  # the draft's own examples (sections 3, 3.2, 4, 4.2, B.3.1) parse with the same rule
        '"burst";q=100;w=60,"daily";q=1000;w=86400',
        '"default";q=100;w=10',
        '"permin";q=50;w=60,"perhr";q=1000;w=3600',
        '"default";r=50;t=30',
        '"hour";q=1000;w=3600, "day";q=5000;w=86400',
        '"day";r=100;t=36000',
    ],
)
def test_the_syntax_check_accepts_the_drafts_examples(example: str) -> None:
    sf_items(example)


async def test_headers_when_allowed() -> None:
    limiter = LocalRateLimiter(clock=ManualClock())
    k, u = key("k_7Hx9", 100), user("u_42", 600, 600)
    for _ in range(57):
        await limiter.check([k, u])
    decision = await limiter.check([k, u])
    headers = rate_limit_headers(decision)
    assert headers == {
        "RateLimit-Policy": '"key";q=100;w=60, "user";q=600;w=60',
        "RateLimit": '"key";r=42;t=35',  # 58 spent at 0.6 s each: full again in 34.8 s
    }
    assert sf_items(headers["RateLimit-Policy"]) == [
        ("key", {"q": 100, "w": 60}),
        ("user", {"q": 600, "w": 60}),
    ]
    assert sf_items(headers["RateLimit"]) == [("key", {"r": 42, "t": 35})]


async def test_headers_when_refused_carry_retry_after_at_the_end_of_the_window() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock)
    k, u = key("k_7Hx9", 100), user("u_42", 6, 2)
    await limiter.check([k, u])
    await limiter.check([k, u])
    clock.advance(2.5)
    decision = await limiter.check([k, u])
    assert not decision.allowed
    headers = rate_limit_headers(decision)
    assert headers == {
        "RateLimit-Policy": '"key";q=100;w=60, "user";q=6;w=60',
        "RateLimit": '"user";r=0;t=8',
        "Retry-After": "8",  # the next one in 7.5 s, rounded up; the same moment as t
    }
    assert sf_items(headers["RateLimit"]) == [("user", {"r": 0, "t": 8})]


def test_headers_of_a_bare_decision_name_its_own_policy() -> None:
    subject = key("x", 30, 4)
    decision = Decision(True, subject, 3, 2, 0)
    assert rate_limit_headers(decision) == {
        "RateLimit-Policy": '"key";q=30;w=60',
        "RateLimit": '"key";r=3;t=2',
    }


async def test_no_id_appears_in_any_header() -> None:
    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock)
    k, u = key("SECRETKEYID123", 5, 2), user("SECRETUSERID456", 5, 2)
    decisions = [await limiter.check([k, u]) for _ in range(4)]
    assert not decisions[-1].allowed
    for decision in decisions:
        text = repr(rate_limit_headers(decision))
        for forbidden in ("SECRETKEYID123", "SECRETUSERID456", "key:", "user:", "pk="):
            assert forbidden not in text


async def test_a_clock_stepped_back_does_not_lock_a_subject_out() -> None:
    # Regression: after the wall clock stepped back an hour, every stored arrival time lay an
    # hour ahead and the subject was refused for that hour. Now it reads as a drained bucket
    # on the new clock: refused for one interval, never given a fresh burst.
    from datetime import timedelta

    from palisade.common.clock import ManualClock
    from palisade.gateway.rate_limit import Limit, LocalRateLimiter, Subject

    clock = ManualClock()
    limiter = LocalRateLimiter(clock=clock)
    subject = Subject("user", "user:1", Limit(60, 3))
    for _ in range(3):
        assert (await limiter.check([subject])).allowed
    assert not (await limiter.check([subject])).allowed
    clock.set(clock.now() - timedelta(hours=1))
    refused = await limiter.check([subject])
    assert not refused.allowed
    assert refused.retry_after_seconds == 1  # one interval, not an hour
    clock.advance(1.0)
    assert (await limiter.check([subject])).allowed
    assert not (await limiter.check([subject])).allowed  # and no burst came with it
