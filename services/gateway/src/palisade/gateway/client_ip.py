"""The client's IP: the socket peer, unless that peer is a trusted proxy (then X-Forwarded-For).

The trusted-hop rule: walk X-Forwarded-For from the right (the hop our proxy added) and take
the first address that is not itself a trusted proxy. Anything a client wrote further left is
never believed, so a spoofed header changes neither rate limits nor audit IPs.

IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports for an IPv4
peer) are read as the IPv4 address they carry, in the peer, in every hop and in the trusted
ranges, and returned in that form: otherwise a proxy in 10.0.0.0/8 reached over a dual-stack
listener is not recognised (its header ignored) and one client counts as two addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def parse_networks(cidrs: Sequence[str]) -> list[Network]:
    networks: list[Network] = []
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr, strict=False)
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
            mapped = network.network_address.ipv4_mapped
            assert mapped is not None
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
        networks.append(network)
    return networks


def _address(text: str) -> Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _normalized(text: str) -> str:
    ip = _address(text)
    return text if ip is None else str(ip)


def _trusted(ip: Address | None, trusted: Sequence[Network]) -> bool:
    return ip is not None and any(ip in network for network in trusted)


def client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    peer_ip = _address(peer)
    peer_text = peer if peer_ip is None else str(peer_ip)
    if not trusted or not _trusted(peer_ip, trusted):
        return peer_text
    hops = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
    for hop in reversed(hops):
        hop_ip = _address(hop)
        if hop_ip is None:
            return peer_text  # a malformed hop: believe nothing beyond our own proxy
        if not _trusted(hop_ip, trusted):
            return str(hop_ip)
    return _normalized(hops[0]) if hops else peer_text
