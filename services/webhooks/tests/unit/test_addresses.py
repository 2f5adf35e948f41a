"""The address policy (SECURITY.md 49): every forbidden class refused with its reason, IPv6
forms that carry a forbidden IPv4 address refused as that address, public addresses allowed,
and the operator allowlist opening exactly the networks it names."""

from __future__ import annotations

import ipaddress

import pytest

from palisade.webhooks.egress.addresses import (
    AddressPolicy,
    parse_address,
    parse_allowed_networks,
)

# (address, reason): one or more of every class the policy refuses. test_egress has its own
# table, one row per class, delivered to through the client.
FORBIDDEN = [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    ("100.100.100.200", "cgnat"),  # Alibaba Cloud's metadata service
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "metadata"),
    ("169.254.0.1", "link_local"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.170", "reserved"),
    ("192.0.2.1", "documentation"),
    ("192.88.99.1", "reserved"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmark"),
    ("198.19.255.255", "benchmark"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::7f00:1", "ipv4_compatible"),  # ::127.0.0.1
    ("::8.8.8.8", "ipv4_compatible"),
    ("::ffff:127.0.0.1", "mapped_loopback"),
    ("::ffff:7f00:1", "mapped_loopback"),  # the same, written in hex
    ("::ffff:10.1.2.3", "mapped_private"),
    ("::ffff:169.254.169.254", "mapped_metadata"),
    ("::ffff:100.64.0.1", "mapped_cgnat"),
    ("::ffff:192.168.0.1", "mapped_private"),
    ("::ffff:0.0.0.0", "mapped_unspecified"),
    ("::ffff:224.0.0.1", "mapped_multicast"),
    ("64:ff9b::7f00:1", "nat64_loopback"),  # 64:ff9b::127.0.0.1
    ("64:ff9b::a9fe:a9fe", "nat64_metadata"),  # 64:ff9b::169.254.169.254
    ("64:ff9b::c0a8:1", "nat64_private"),
    ("64:ff9b:1::1", "nat64_local"),
    ("2002:7f00:1::1", "6to4_loopback"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::", "6to4_metadata"),
    ("2002:a00:1::1", "6to4_private"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo"),
    ("2001::1", "teredo"),
    ("2001:10::1", "reserved"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("100::1", "discard"),
    ("fc00::1", "unique_local"),
    ("fd12:3456:789a::1", "unique_local"),
    ("fd00:ec2::254", "unique_local"),  # AWS' IPv6 metadata address
    ("fe80::1", "link_local"),
    ("febf::1", "link_local"),
    ("fec0::1", "site_local"),
    ("ff02::1", "multicast"),
    ("ff05::2", "multicast"),
    ("::ffff:0:7f00:1", "reserved"),  # SIIT-translated 127.0.0.1
    ("4000::1", "reserved"),  # outside 2000::/3: not allocated for global unicast
]

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above
    "172.15.255.255",
    "172.32.0.0",
    "192.169.0.1",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2a00:1450:4001:82a::200e",
    "::ffff:8.8.8.8",  # mapped public: the socket goes to 8.8.8.8
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(("text", "reason"), FORBIDDEN)
def test_forbidden_classes_are_refused(text: str, reason: str) -> None:
    verdict = AddressPolicy().verdict(parse_address(text))
    assert not verdict.allowed
    assert verdict.reason == reason
    assert not verdict.allowlisted


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_are_allowed(text: str) -> None:
    verdict = AddressPolicy().verdict(parse_address(text))
    assert verdict.allowed
    assert verdict.reason is None


def test_zone_of_a_link_local_address_is_ignored() -> None:
    verdict = AddressPolicy().verdict(parse_address("fe80::1%eth0"))
    assert verdict.reason == "link_local"


def test_allowlist_opens_exactly_its_networks() -> None:
    policy = AddressPolicy(allowed_networks=parse_allowed_networks('["127.0.0.0/8"]'))
    for text in ("127.0.0.1", "127.9.9.9", "::ffff:127.0.0.1"):
        verdict = policy.verdict(parse_address(text))
        assert verdict.allowed, text
        assert verdict.allowlisted, text
    for text, reason in (
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("169.254.169.254", "metadata"),
        # Translators into an allowlisted network are not opened by it.
        ("64:ff9b::7f00:1", "nat64_loopback"),
        ("2002:7f00:1::1", "6to4_loopback"),
    ):
        verdict = policy.verdict(parse_address(text))
        assert not verdict.allowed, text
        assert verdict.reason == reason
    # Public addresses stay allowed and are not "allowlisted" (so plain http stays refused).
    public = policy.verdict(parse_address("8.8.8.8"))
    assert public.allowed
    assert not public.allowlisted


def test_allowlist_of_a_private_v6_range() -> None:
    policy = AddressPolicy(allowed_networks=parse_allowed_networks(["fd00:1::/32"]))
    assert policy.verdict(parse_address("fd00:1::5")).allowed
    assert not policy.verdict(parse_address("fd00:2::5")).allowed


def test_first_refused_finds_one_bad_address_among_good_ones() -> None:
    policy = AddressPolicy()
    good = [parse_address("8.8.8.8"), parse_address("2606:4700:4700::1111")]
    assert policy.first_refused(good) is None
    refused = policy.first_refused([*good, parse_address("10.0.0.1")])
    assert refused is not None
    assert refused.reason == "private"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ()),
        ("", ()),
        ("  ", ()),
        ("[]", ()),
        ('["127.0.0.0/8"]', (ipaddress.ip_network("127.0.0.0/8"),)),
        (
            '["10.1.0.0/16", " fd00::/8 ", "10.1.0.0/16"]',
            (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00::/8")),
        ),
        (["192.168.5.0/24"], (ipaddress.ip_network("192.168.5.0/24"),)),
        ('["127.0.0.1"]', (ipaddress.ip_network("127.0.0.1/32"),)),
    ],
)
def test_allowlist_parsing(value: object, expected: tuple[object, ...]) -> None:
    assert parse_allowed_networks(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        "127.0.0.0/8",  # not JSON
        '"127.0.0.0/8"',  # JSON, not a list
        '{"net": "10.0.0.0/8"}',
        "[1]",
        '["127.0.0.1/8"]',  # host bits set
        '["10.0.0.0/33"]',
        '["not a network"]',
        '["10.0.0.0/8",]',
        str(["10.0.0.0/8"] * 300).replace("'", '"'),
    ],
)
def test_bad_allowlists_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"network|CIDR|at most"):
        parse_allowed_networks(value)
