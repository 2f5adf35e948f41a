"""Login throttling (SECURITY.md 6, 7, 10): LoginThrottle over MemoryFailureCounts, with time
moved by a ManualClock."""

from __future__ import annotations

import grpc
import pytest

from palisade.auth.errors import Throttled
from palisade.auth.throttle import LoginThrottle, MemoryFailureCounts, ThrottleLimits
from palisade.common.clock import ManualClock

IP_LIMIT = 5
ACCOUNT_IP_LIMIT = 3
ACCOUNT_LIMIT = 8
WINDOW = 60
ACCOUNT_WINDOW = 300

ATTACKER = "198.51.100.66"
USER_IP = "203.0.113.7"


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def throttle(clock):
    limits = ThrottleLimits(
        ip_failures=IP_LIMIT,
        account_ip_failures=ACCOUNT_IP_LIMIT,
        account_failures=ACCOUNT_LIMIT,
        window_seconds=WINDOW,
        account_window_seconds=ACCOUNT_WINDOW,
    )
    return LoginThrottle(counts=MemoryFailureCounts(), limits=limits, clock=clock)


async def _fail(throttle, account, ip, times=1) -> None:
    for _ in range(times):
        await throttle.check(account, ip)
        await throttle.record_failure(account, ip)


async def _throttled(throttle, account, ip) -> Throttled:
    with pytest.raises(Throttled) as caught:
        await throttle.check(account, ip)
    assert type(caught.value) is Throttled
    return caught.value


async def test_fresh_state_is_not_throttled(throttle) -> None:
    await throttle.check("acct", USER_IP)
    await throttle.check("acct", None)


# --- the three counters ------------------------------------------------------------------------


async def test_per_account_and_ip_limit(throttle) -> None:
    await _fail(throttle, "alice", ATTACKER, ACCOUNT_IP_LIMIT - 1)
    await throttle.check("alice", ATTACKER)  # one short of the limit
    await throttle.record_failure("alice", ATTACKER)
    await _throttled(throttle, "alice", ATTACKER)
    # Neither the IP (3 < 5) nor the account (3 < 8) is at its own limit.
    await throttle.check("bob", ATTACKER)
    await throttle.check("alice", USER_IP)


async def test_per_ip_limit_across_accounts(throttle) -> None:
    for i in range(IP_LIMIT):
        await _fail(throttle, f"victim{i}", ATTACKER)
    err = await _throttled(throttle, "someone-new", ATTACKER)
    assert err.retry_after_seconds == WINDOW
    # The accounts themselves are fine from elsewhere.
    for i in range(IP_LIMIT):
        await throttle.check(f"victim{i}", USER_IP)


async def test_per_account_cap_across_many_ips(throttle) -> None:
    for i in range(ACCOUNT_LIMIT):
        await _fail(throttle, "alice", f"192.0.2.{i}")
    err = await _throttled(throttle, "alice", "192.0.2.250")
    assert err.retry_after_seconds == ACCOUNT_WINDOW
    await _throttled(throttle, "alice", None)
    await throttle.check("bob", "192.0.2.250")


async def test_account_cap_is_one_short_of_the_limit_before_it_bites(throttle) -> None:
    for i in range(ACCOUNT_LIMIT - 1):
        await _fail(throttle, "alice", f"192.0.2.{i}")
    await throttle.check("alice", "192.0.2.250")


# --- Throttled, Retry-After ----------------------------------------------------------------


async def test_throttled_carries_retry_after_within_the_window(throttle, clock) -> None:
    await _fail(throttle, "alice", ATTACKER, ACCOUNT_IP_LIMIT)
    err = await _throttled(throttle, "alice", ATTACKER)
    assert err.retry_after_seconds == WINDOW
    assert err.trailing_metadata() == (("retry-after", str(WINDOW)),)
    assert err.code == "rate_limited"
    assert err.status == grpc.StatusCode.RESOURCE_EXHAUSTED

    clock.advance(20)
    err = await _throttled(throttle, "alice", ATTACKER)
    assert err.retry_after_seconds == 40
    assert err.trailing_metadata() == (("retry-after", "40"),)


async def test_retry_after_rounds_up_and_stays_positive(throttle, clock) -> None:
    await _fail(throttle, "alice", ATTACKER, ACCOUNT_IP_LIMIT)
    clock.advance(0.5)
    assert (await _throttled(throttle, "alice", ATTACKER)).retry_after_seconds == WINDOW
    clock.advance(WINDOW - 0.5 - 0.25)  # 0.25 s left
    err = await _throttled(throttle, "alice", ATTACKER)
    assert err.retry_after_seconds == 1
    assert err.trailing_metadata() == (("retry-after", "1"),)


async def test_retry_after_is_always_in_1_to_window(throttle, clock) -> None:
    await _fail(throttle, "alice", ATTACKER, ACCOUNT_IP_LIMIT)
    for _ in range(WINDOW * 4 - 1):
        clock.advance(0.25)
        err = await _throttled(throttle, "alice", ATTACKER)
        assert 0 < err.retry_after_seconds <= WINDOW
        assert err.trailing_metadata() == (("retry-after", str(err.retry_after_seconds)),)


async def test_retry_after_is_the_longest_of_the_counters_at_limit(throttle, clock) -> None:
    # The account reaches its cap through other IPs; the attacker's pair is also at its limit.
    for i in range(ACCOUNT_LIMIT - ACCOUNT_IP_LIMIT):
        await _fail(throttle, "alice", f"192.0.2.{i}")
    await _fail(throttle, "alice", ATTACKER, ACCOUNT_IP_LIMIT)
    clock.advance(10)
    err = await _throttled(throttle, "alice", ATTACKER)
    assert err.retry_after_seconds == ACCOUNT_WINDOW - 10


def test_throttled_never_says_zero_seconds() -> None:
    assert Throttled(0).retry_after_seconds == 1
    assert Throttled(-5).retry_after_seconds == 1
    assert Throttled(0).trailing_metadata() == (("retry-after", "1"),)


# --- success resets ------------------------------------------------------------------------


async def test_success_clears_the_account_ip_count(throttle) -> None:
    await _fail(throttle, "alice", USER_IP, ACCOUNT_IP_LIMIT - 1)
    await throttle.record_success("alice", USER_IP)
    await _fail(throttle, "alice", USER_IP, ACCOUNT_IP_LIMIT - 1)
    await throttle.check("alice", USER_IP)  # 2 since the success, not 4


async def test_success_clears_the_account_count_across_ips(throttle) -> None:
    for i in range(ACCOUNT_LIMIT - 1):
        await _fail(throttle, "alice", f"192.0.2.{i}")
    await throttle.record_success("alice", USER_IP)
    for i in range(ACCOUNT_LIMIT - 1):
        await _fail(throttle, "alice", f"192.0.2.{100 + i}")
    await throttle.check("alice", "192.0.2.250")  # 7 since the success, not 14
    await throttle.check("alice", None)


async def test_success_lifts_an_account_that_was_at_its_cap(throttle) -> None:
    for i in range(ACCOUNT_LIMIT):
        await _fail(throttle, "alice", f"192.0.2.{i}")
    await _throttled(throttle, "alice", None)
    await throttle.record_success("alice", None)
    await throttle.check("alice", None)


async def test_success_does_not_clear_the_ip_count(throttle) -> None:
    await _fail(throttle, "alice", ATTACKER, 2)
    await throttle.record_success("alice", ATTACKER)  # the attacker owns one account
    for i in range(IP_LIMIT - 2):
        await _fail(throttle, f"victim{i}", ATTACKER)
    await _throttled(throttle, "victim-next", ATTACKER)
    await _throttled(throttle, "alice", ATTACKER)


async def test_success_for_one_account_does_not_clear_another(throttle) -> None:
    await _fail(throttle, "alice", USER_IP, ACCOUNT_IP_LIMIT)
    await throttle.record_success("bob", USER_IP)
    await _throttled(throttle, "alice", USER_IP)


# --- decay ---------------------------------------------------------------------------------


async def test_counts_decay_once_the_window_passes_without_failures(throttle, clock) -> None:
    await _fail(throttle, "alice", ATTACKER, ACCOUNT_IP_LIMIT)
    await _throttled(throttle, "alice", ATTACKER)
    clock.advance(WINDOW - 1)
    await _throttled(throttle, "alice", ATTACKER)
    clock.advance(2)
    await throttle.check("alice", ATTACKER)
    # The count restarted: the limit is available again in full.
    await _fail(throttle, "alice", ATTACKER, ACCOUNT_IP_LIMIT - 1)
    await throttle.check("alice", ATTACKER)
    await throttle.record_failure("alice", ATTACKER)
    await _throttled(throttle, "alice", ATTACKER)


async def test_a_count_restarts_exactly_when_check_says_the_window_passed(throttle, clock):
    await _fail(throttle, "alice", ATTACKER, ACCOUNT_IP_LIMIT)
    clock.advance(WINDOW)  # the window has exactly passed: check lets the attempt through
    await throttle.check("alice", ATTACKER)
    await throttle.record_failure("alice", ATTACKER)
    # That failure must start a new count of 1, not make it 4 and throttle for a new window.
    await throttle.check("alice", ATTACKER)


async def test_counts_keep_growing_while_failures_keep_coming(throttle, clock) -> None:
    # One failure every 200 s from a fresh IP: each per-IP count decays, the account's does not.
    for i in range(ACCOUNT_LIMIT):
        if i:
            clock.advance(ACCOUNT_WINDOW - 100)
        await _fail(throttle, "alice", f"192.0.2.{i}")
    err = await _throttled(throttle, "alice", "192.0.2.250")
    assert err.retry_after_seconds == ACCOUNT_WINDOW


async def test_ip_count_keeps_growing_while_failures_keep_coming(throttle, clock) -> None:
    for i in range(IP_LIMIT):
        await _fail(throttle, f"victim{i}", ATTACKER)
        clock.advance(WINDOW - 1)
    err = await _throttled(throttle, "victim-next", ATTACKER)
    assert err.retry_after_seconds == 1


async def test_ip_count_decays_on_its_own_window_and_account_on_its_own(throttle, clock):
    for i in range(ACCOUNT_LIMIT):
        await _fail(throttle, "alice", f"192.0.2.{i}")
    clock.advance(WINDOW + 1)  # every per-IP count has decayed, the account's has not
    err = await _throttled(throttle, "alice", "192.0.2.0")
    assert err.retry_after_seconds == ACCOUNT_WINDOW - WINDOW - 1
    clock.advance(ACCOUNT_WINDOW)
    await throttle.check("alice", "192.0.2.0")


# --- the attacker and the real user ------------------------------------------------------


async def test_attackers_ip_being_throttled_does_not_lock_out_the_user_elsewhere(throttle):
    await _fail(throttle, "alice", ATTACKER, ACCOUNT_IP_LIMIT)
    await _throttled(throttle, "alice", ATTACKER)
    await throttle.check("alice", USER_IP)
    # The attacker also burns the rest of its IP budget on other accounts.
    for i in range(IP_LIMIT - ACCOUNT_IP_LIMIT):
        await _fail(throttle, f"victim{i}", ATTACKER)
    await _throttled(throttle, "anyone", ATTACKER)
    await throttle.check("alice", USER_IP)
    await throttle.record_success("alice", USER_IP)
    await throttle.check("alice", USER_IP)
    await _throttled(throttle, "alice", ATTACKER)  # the user's success frees nothing for it


async def test_user_from_another_ip_keeps_their_own_attempts(throttle) -> None:
    await _fail(throttle, "alice", ATTACKER, ACCOUNT_IP_LIMIT)
    await _fail(throttle, "alice", USER_IP, ACCOUNT_IP_LIMIT - 1)  # typos from home
    await throttle.check("alice", USER_IP)


# --- no client IP --------------------------------------------------------------------------


async def test_check_and_record_without_an_ip(throttle) -> None:
    await throttle.check("alice", None)
    await throttle.record_failure("alice", None)
    await throttle.record_success("alice", None)
    for _ in range(ACCOUNT_LIMIT - 1):
        await _fail(throttle, "alice", None)
    await throttle.check("alice", None)
    await throttle.record_failure("alice", None)
    await _throttled(throttle, "alice", None)
    await _throttled(throttle, "alice", USER_IP)  # the account cap holds from everywhere


async def test_failures_without_an_ip_count_only_towards_the_account(throttle) -> None:
    for i in range(IP_LIMIT):
        await _fail(throttle, f"victim{i}", None)
    await throttle.check("someone-new", None)
    await throttle.check("someone-new", USER_IP)


async def test_empty_ip_is_treated_like_no_ip(throttle) -> None:
    for i in range(IP_LIMIT):
        await _fail(throttle, f"victim{i}", "")
    await throttle.check("someone-new", "")


# --- the memory store's contract -----------------------------------------------------------


async def test_memory_counts_contract() -> None:
    counts = MemoryFailureCounts()
    assert await counts.read(["a", "b"]) == [(0, 0.0), (0, 0.0)]
    await counts.add_failure([("a", 10), ("b", 100)], 1000.0)
    await counts.add_failure([("a", 10), ("b", 100)], 1005.0)
    assert await counts.read(["a", "b", "c"]) == [(2, 1005.0), (2, 1005.0), (0, 0.0)]
    await counts.add_failure([("a", 10), ("b", 100)], 1020.0)  # a's window has passed
    assert await counts.read(["a", "b"]) == [(1, 1020.0), (3, 1020.0)]
    await counts.clear(["a", "never-seen"])
    assert await counts.read(["a", "b"]) == [(0, 0.0), (3, 1020.0)]
    await counts.clear([])
