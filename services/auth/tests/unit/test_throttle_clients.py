"""Lockout by strangers (issue 9 item 3, SECURITY.md 7): IPv6 clients counted per /64, IPv4-
mapped addresses as IPv4, and a known client past the account-wide cap (not past its own)."""

from __future__ import annotations

import pytest

from palisade.auth.errors import Throttled
from palisade.auth.throttle import (
    LoginThrottle,
    MemoryFailureCounts,
    ThrottleLimits,
)
from palisade.common.client_text import client_bucket
from palisade.common.clock import ManualClock

IP_LIMIT = 5
ACCOUNT_IP_LIMIT = 3
ACCOUNT_LIMIT = 8
KNOWN_SECONDS = 3600
OWNER = "203.0.113.7"


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def throttle(clock):
    limits = ThrottleLimits(
        ip_failures=IP_LIMIT,
        account_ip_failures=ACCOUNT_IP_LIMIT,
        account_failures=ACCOUNT_LIMIT,
        window_seconds=60,
        account_window_seconds=300,
        known_client_seconds=KNOWN_SECONDS,
    )
    return LoginThrottle(counts=MemoryFailureCounts(), limits=limits, clock=clock)


async def _fail(throttle, account, ip, times=1) -> None:
    for _ in range(times):
        await throttle.acquire(account, ip)  # counted; the password was wrong


async def _refused(throttle, account, ip) -> bool:
    try:
        await throttle.acquire(account, ip)
    except Throttled:
        return True
    return False


@pytest.mark.parametrize(
    ("ip", "bucket"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::ffff:c000:201", "192.0.2.1"),
        ("not an address", "not an address"),
        ("", None),
        (None, None),
    ],
)
def test_client_bucket(ip, bucket) -> None:
    assert client_bucket(ip) == bucket


async def test_ipv6_addresses_of_one_slash_64_share_one_count(throttle) -> None:
    for i in range(ACCOUNT_IP_LIMIT):  # a new address for every guess
        await _fail(throttle, "acct", f"2001:db8:1:2::{i + 1:x}")
    assert await _refused(throttle, "acct", "2001:db8:1:2:ffff:ffff:ffff:ffff")
    # Across accounts, too: the per-client limit counts the /64.
    for i in range(IP_LIMIT - ACCOUNT_IP_LIMIT):
        await _fail(throttle, f"other{i}", f"2001:db8:1:2::{100 + i:x}")
    assert await _refused(throttle, "fresh", "2001:db8:1:2::beef")
    # The neighbouring /64 is another client.
    assert not await _refused(throttle, "fresh", "2001:db8:1:3::1")


async def test_ipv4_mapped_ipv6_counts_as_the_ipv4_address(throttle) -> None:
    for _ in range(ACCOUNT_IP_LIMIT):
        await _fail(throttle, "acct", "::ffff:192.0.2.1")
    assert await _refused(throttle, "acct", "192.0.2.1")


async def test_a_known_client_passes_the_account_cap_that_strangers_spent(throttle) -> None:
    await throttle.acquire("acct", OWNER)
    await throttle.accepted("acct", OWNER)  # the owner logged in from here once
    for i in range(ACCOUNT_LIMIT):  # a distributed attack: one guess per address
        await _fail(throttle, "acct", f"198.51.100.{i + 1}")
    assert await _refused(throttle, "acct", "198.51.100.200")  # strangers: the cap holds
    assert await _refused(throttle, "acct", "2001:db8:9::1")
    assert not await _refused(throttle, "acct", OWNER)  # the owner is not locked out


async def test_a_known_client_still_has_its_own_per_account_limit(throttle) -> None:
    await throttle.acquire("acct", OWNER)
    await throttle.accepted("acct", OWNER)
    await _fail(throttle, "acct", OWNER, ACCOUNT_IP_LIMIT)
    assert await _refused(throttle, "acct", OWNER)


async def test_known_is_per_account_and_expires(throttle, clock) -> None:
    await throttle.acquire("acct", OWNER)
    await throttle.accepted("acct", OWNER)
    for i in range(ACCOUNT_LIMIT):
        await _fail(throttle, "other", f"198.51.100.{i + 1}")
    assert await _refused(throttle, "other", OWNER)  # known to acct, not to other
    clock.advance(KNOWN_SECONDS - 200)
    for i in range(ACCOUNT_LIMIT):
        await _fail(throttle, "acct", f"198.51.100.{i + 1}")
    assert not await _refused(throttle, "acct", OWNER)
    await throttle.accepted("acct", OWNER)
    clock.advance(KNOWN_SECONDS)  # a whole period without a login from here
    for i in range(ACCOUNT_LIMIT):
        await _fail(throttle, "acct", f"192.0.2.{i + 1}")
    assert await _refused(throttle, "acct", OWNER)
