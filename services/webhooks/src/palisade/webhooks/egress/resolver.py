"""Host name resolution for deliveries, behind a Protocol so tests inject answers.

The real resolver asks the operating system (loop.getaddrinfo, in the loop's thread pool) for
TCP addresses of the host and returns every distinct one, in the order given: the caller checks
them all and connects only to those (no second lookup anywhere, so no DNS rebinding between
the check and the connection).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

from palisade.webhooks.egress.addresses import IPAddress, parse_address


class ResolutionFailed(Exception):
    """The host has no address, or the lookup failed. Safe to log: no secret inside."""


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of host (an ASCII name, not an IP literal) for a TCP connection to
        port; at least one, else ResolutionFailed."""
        ...


class SystemResolver:
    """The operating system's resolver (getaddrinfo: /etc/hosts, then DNS)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (OSError, UnicodeError) as exc:
            raise ResolutionFailed(f"{type(exc).__name__} resolving the host") from None
        addresses: list[IPAddress] = []
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = parse_address(str(sockaddr[0]))
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise ResolutionFailed("the host has no IPv4 or IPv6 address")
        return addresses
