"""What counts as one network for new-sign-in alerts (sessions/new_networks.py)."""

from __future__ import annotations

import pytest

from palisade.auth.local_keys import LocalKeys
from palisade.auth.sessions.new_networks import network_of


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("127.0.0.2", "127.0.0.2"),
        # IPv6: the /64, however the interface part changes (privacy addresses rotate).
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2:0:0:0:FFFF", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        # An IPv4 client seen through a dual-stack socket is that IPv4 address.
        ("::ffff:203.0.113.7", "203.0.113.7"),
    ],
)
def test_network_of(ip: str, network: str) -> None:
    assert network_of(ip) == network


def test_neighbouring_ipv6_networks_differ() -> None:
    assert network_of("2001:db8:1:2::1") != network_of("2001:db8:1:3::1")


@pytest.mark.parametrize("ip", [None, "", "not an address", "999.1.1.1", "2001:db8::/64"])
def test_no_network_for_unreadable_addresses(ip: str | None) -> None:
    assert network_of(ip) is None


def test_network_keys_are_per_user_and_hide_the_address() -> None:
    keys = LocalKeys(bytes(range(32)))
    a = keys.known_network_key("usr_a", "203.0.113.7")
    assert a == keys.known_network_key("usr_a", "203.0.113.7")
    assert a != keys.known_network_key("usr_b", "203.0.113.7")
    assert a != keys.known_network_key("usr_a", "203.0.113.8")
    assert a != LocalKeys(bytes(32)).known_network_key("usr_a", "203.0.113.7")
    assert "203" not in a
    assert a.startswith("n1:")
    assert len(a) <= 64
    # Length-prefixed: the boundary between user and network cannot shift.
    assert keys.known_network_key("usr_a1", "0.0.0.1") != keys.known_network_key(
        "usr_a", "10.0.0.1"
    )
