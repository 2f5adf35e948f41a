"""The address policy: which IP addresses a webhook delivery may connect to (SECURITY.md 49).

Refused by default: everything that is not ordinary public unicast, named by why (loopback,
private, link-local and the 169.254.169.254 metadata address, CGNAT, multicast, broadcast,
reserved, benchmark, documentation, IPv6 unique-local, site-local, link-local, discard, Teredo,
and the IPv4-compatible range), and every IPv6 form that carries a forbidden IPv4 address
(IPv4-mapped ::ffff:a.b.c.d, which the kernel dials as that IPv4 address; NAT64 64:ff9b::/96
and 6to4 2002::/16, which a gateway or relay turns into it).

The tables are explicit instead of relying on ipaddress' is_private/is_global, whose answers
changed between Python releases; a final rule refuses every IPv6 address outside 2000::/3
(the only space allocated for global unicast), so a range missing from the table still fails
closed.

An operator allowlist (PALISADE_WEBHOOKS_ALLOWED_NETWORKS, parsed by parse_allowed_networks and
handed to AddressPolicy by config) opens chosen networks, e.g. ["127.0.0.0/8"] for the embedded
default and tests, or a private range of in-house receivers. Allowlisted addresses may also be
reached over plain http (urls.py).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# At most this many allowlist entries: a list this long is a configuration mistake.
MAX_ALLOWED_NETWORKS = 256


def _v4(*rows: tuple[str, str]) -> tuple[tuple[ipaddress.IPv4Network, str], ...]:
    return tuple((ipaddress.IPv4Network(cidr), reason) for cidr, reason in rows)


def _v6(*rows: tuple[str, str]) -> tuple[tuple[ipaddress.IPv6Network, str], ...]:
    return tuple((ipaddress.IPv6Network(cidr), reason) for cidr, reason in rows)


# First match wins, so the more specific rows come first (169.254.169.254 before 169.254/16,
# the broadcast address before 240/4). Reasons are stable words for logs and error messages.
_FORBIDDEN_V4 = _v4(
    ("0.0.0.0/8", "unspecified"),  # "this network": 0.0.0.0 reaches the local host on Linux
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.169.254/32", "metadata"),  # cloud instance metadata (AWS, GCP, Azure, ...)
    ("169.254.0.0/16", "link_local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments (incl. 192.0.0.170 NAT64 discovery)
    ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "reserved"),  # AS112
    ("192.52.193.0/24", "reserved"),  # AMT
    ("192.88.99.0/24", "reserved"),  # 6to4 relay anycast
    ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "reserved"),  # AS112 direct delegation
    ("198.18.0.0/15", "benchmark"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")

_FORBIDDEN_V6 = _v6(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "ipv4_compatible"),  # deprecated ::a.b.c.d; no legitimate receiver uses it
    ("::ffff:0:0:0/96", "reserved"),  # SIIT ::ffff:0:a.b.c.d, translated like NAT64
    ("64:ff9b:1::/48", "nat64_local"),  # local-use NAT64 prefix: inside some network
    ("100::/64", "discard"),
    ("2001::/32", "teredo"),  # tunnels to an IPv4 address we cannot judge
    ("2001::/23", "reserved"),  # IETF protocol assignments (ORCHID, AMT, AS112, ...)
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "reserved"),  # SRv6 SIDs
    ("fc00::/7", "unique_local"),
    ("fe80::/10", "link_local"),
    ("fec0::/10", "site_local"),
    ("ff00::/8", "multicast"),
)


@dataclass(frozen=True, slots=True)
class AddressVerdict:
    """What the policy says about one address. reason: None when allowed, else a stable word
    (e.g. "loopback", "metadata", "mapped_private")."""

    address: IPAddress
    allowed: bool
    allowlisted: bool
    reason: str | None


def parse_address(text: str) -> IPAddress:
    """An address as a resolver writes it; an IPv6 zone ("fe80::1%eth0") is dropped, since the
    policy judges the address (link-local is refused either way). Raises ValueError."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    return address


def parse_allowed_networks(value: str | Sequence[str] | None) -> tuple[IPNetwork, ...]:
    """PALISADE_WEBHOOKS_ALLOWED_NETWORKS: a JSON list of CIDRs (or the list itself, when the
    settings loader has decoded it already); empty or unset: no network is opened.

    Strict: a CIDR with host bits set ("127.0.0.1/8") is refused rather than silently widened
    or narrowed, and so is anything that is not a list of strings. Raises ValueError naming the
    entry (networks are configuration, never secrets)."""
    if value is None:
        return ()
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(
                "PALISADE_WEBHOOKS_ALLOWED_NETWORKS must be a JSON list of CIDRs,"
                ' e.g. ["127.0.0.0/8"]'
            ) from None
    if not isinstance(value, list | tuple):
        raise ValueError("PALISADE_WEBHOOKS_ALLOWED_NETWORKS must be a JSON list of CIDRs")
    if len(value) > MAX_ALLOWED_NETWORKS:
        raise ValueError(f"at most {MAX_ALLOWED_NETWORKS} allowed networks")
    networks: list[IPNetwork] = []
    for entry in value:
        if not isinstance(entry, str):
            raise ValueError(f"allowed network {entry!r} is not a string")
        try:
            network = ipaddress.ip_network(entry.strip(), strict=True)
        except ValueError:
            raise ValueError(
                f"allowed network {entry!r} is not a CIDR without host bits (e.g. 10.1.0.0/16)"
            ) from None
        if network not in networks:
            networks.append(network)
    return tuple(networks)


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 gateway or 6to4 relay would forward this address to."""
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF)
    return None


def _forbidden_v4(address: ipaddress.IPv4Address) -> str | None:
    for network, reason in _FORBIDDEN_V4:
        if address in network:
            return reason
    return None


def _forbidden_v6(address: ipaddress.IPv6Address) -> str | None:
    for network, reason in _FORBIDDEN_V6:
        if address in network:
            return reason
    embedded = _embedded_v4(address)
    if embedded is not None:
        inner = _forbidden_v4(embedded)
        if inner is not None:
            return f"{'nat64' if address in _NAT64 else '6to4'}_{inner}"
        # A DNS64 resolver on an IPv6-only network answers 64:ff9b::a.b.c.d for IPv4-only
        # hosts: to a public one, that is an ordinary delivery.
        return None
    if address not in _GLOBAL_UNICAST:
        return "reserved"
    return None


class AddressPolicy:
    """Judges destination addresses: forbidden ranges refused unless in an allowlisted network.

    An IPv4-mapped address (::ffff:a.b.c.d) is judged as the IPv4 address it is, allowlist
    included, because that is where the socket goes. NAT64 and 6to4 forms are refused when the
    IPv4 address inside is forbidden, whatever the allowlist says about it: the allowlist opens
    the networks it names, not translators that lead into them.
    """

    def __init__(self, *, allowed_networks: Iterable[IPNetwork] = ()) -> None:
        self._allowed = tuple(allowed_networks)

    @property
    def allowed_networks(self) -> tuple[IPNetwork, ...]:
        return self._allowed

    def is_allowlisted(self, address: IPAddress) -> bool:
        address = _unmapped(address)
        return any(
            address.version == network.version and address in network for network in self._allowed
        )

    def verdict(self, address: IPAddress) -> AddressVerdict:
        plain = _unmapped(address)
        if self.is_allowlisted(plain):
            return AddressVerdict(address=address, allowed=True, allowlisted=True, reason=None)
        if isinstance(plain, ipaddress.IPv4Address):
            reason = _forbidden_v4(plain)
            if reason is not None and plain is not address:
                reason = f"mapped_{reason}"
        else:
            reason = _forbidden_v6(plain)
        return AddressVerdict(
            address=address, allowed=reason is None, allowlisted=False, reason=reason
        )

    def first_refused(self, addresses: Iterable[IPAddress]) -> AddressVerdict | None:
        """The verdict of the first refused address, or None when every one is allowed."""
        for address in addresses:
            verdict = self.verdict(address)
            if not verdict.allowed:
                return verdict
        return None


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
    return address
