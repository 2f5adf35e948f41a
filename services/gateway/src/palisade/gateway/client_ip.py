"""The client's IP: the socket peer, unless that peer is a trusted proxy (then X-Forwarded-For).

The trusted-hop rule: walk X-Forwarded-For from the right (the hop our proxy added) and take
the first address that is not itself a trusted proxy. Anything a client wrote further left is
never believed, so a spoofed header changes neither rate limits nor audit IPs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_ip(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    if not trusted:  # no proxies configured (the default): nothing to parse on every request
        return peer
    if not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in (forwarded_for or "").split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer  # a malformed hop: believe nothing beyond our own proxy
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else peer
