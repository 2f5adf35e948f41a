"""IPv4-mapped IPv6 peers and hops (issue 9 item 11, SECURITY.md 9), and the k8s trust range.

A dual-stack listener reports an IPv4 proxy as `::ffff:10.0.0.1`: before, that peer matched
no IPv4 range, so the proxy's X-Forwarded-For was ignored and every client looked like the
proxy (one shared rate limit, one audit IP); a mapped hop was likewise not recognised.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from palisade.gateway.client_ip import client_ip, parse_networks

EDGE = parse_networks(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("::ffff:10.0.0.1", "198.51.100.7", "198.51.100.7"),  # mapped proxy peer is trusted
        ("::ffff:10.0.0.1", "198.51.100.7, ::ffff:10.2.2.2", "198.51.100.7"),  # mapped hop
        ("::ffff:10.0.0.1", "::ffff:198.51.100.7", "198.51.100.7"),  # client reported mapped
        ("::ffff:10.0.0.1", "::ffff:10.3.3.3, 10.2.2.2", "10.3.3.3"),  # all trusted: leftmost
        ("::ffff:10.0.0.1", None, "10.0.0.1"),
        ("::ffff:203.0.113.5", "198.51.100.7", "203.0.113.5"),  # untrusted, mapped: as IPv4
        ("::FFFF:0A00:0001", "198.51.100.7", "198.51.100.7"),  # hex spelling of 10.0.0.1
        ("10.0.0.1", "::ffff:10.9.9.9, 6.6.6.6", "6.6.6.6"),
    ],
)
def test_mapped_addresses_are_read_as_ipv4(peer, forwarded, expected) -> None:
    assert client_ip(peer, forwarded, EDGE) == expected


def test_without_trusted_proxies_a_mapped_peer_is_still_normalized() -> None:
    assert client_ip("::ffff:198.51.100.7", "6.6.6.6", []) == "198.51.100.7"
    assert client_ip("2001:db8::1", None, []) == "2001:db8::1"
    assert client_ip("not-an-ip", None, []) == "not-an-ip"


def test_a_mapped_trusted_range_means_its_ipv4_range() -> None:
    [network] = parse_networks(["::ffff:10.0.0.0/104"])
    assert network == ipaddress.ip_network("10.0.0.0/8")
    assert client_ip("10.4.4.4", "198.51.100.7", [network]) == "198.51.100.7"


def test_a_plain_ipv6_range_is_not_mistaken_for_mapped() -> None:
    [network] = parse_networks(["fd00::/8"])
    assert client_ip("::ffff:10.0.0.1", "198.51.100.7", [network]) == "10.0.0.1"


# --- the Kubernetes manifests ----------------------------------------------------------------

_ROOT = Path(__file__).resolve().parents[4]


def _trusted_in_manifests() -> list[str]:
    found = []
    for manifest in (_ROOT / "deploy" / "k8s").rglob("*.yaml"):
        for match in re.finditer(
            r"PALISADE_GATEWAY_TRUSTED_PROXIES, value: '(\[.*?\])'", manifest.read_text()
        ):
            found.extend(re.findall(r'"([^"]+)"', match.group(1)))
    return found


def test_the_manifests_trust_only_a_narrow_edge_proxy_range() -> None:
    """All of 10.0.0.0/8 holds every pod of a typical cluster: any of them could then write
    X-Forwarded-For and pick its own client IP. Only the Envoy edge pods' range is trusted."""
    cidrs = _trusted_in_manifests()
    assert cidrs, "the gateway manifest names its trusted proxies"
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr)
        limit = 24 if network.version == 4 else 120
        assert network.prefixlen >= limit, f"{cidr} trusts more than the edge proxy's range"
