"""Host name resolution for deliveries, behind a Protocol so tests inject answers.

The real resolver asks the operating system (getaddrinfo) for TCP addresses of the host and
returns every distinct one, in the order given: the caller checks them all and connects only to
those (no second lookup anywhere, so no DNS rebinding between the check and the connection).

getaddrinfo blocks a thread for as long as the host's name servers take, and a thread is not
freed when the awaiting attempt gives up. So lookups run in a small pool of their own: receivers
with slow DNS (anyone can register one) queue behind each other, never behind or in front of
the service's other work in the loop's default executor (database calls, among others).
"""

from __future__ import annotations

import asyncio
import functools
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from palisade.webhooks.egress.addresses import IPAddress, parse_address


class ResolutionFailed(Exception):
    """The host has no address, or the lookup failed. Safe to log: no secret inside."""


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of host (an ASCII name, not an IP literal) for a TCP connection to
        port; at least one, else ResolutionFailed."""
        ...


DEFAULT_LOOKUP_THREADS = 8


class SystemResolver:
    """The operating system's resolver (getaddrinfo: /etc/hosts, then DNS), in its own pool of
    `threads` lookup threads. close() when done (the pool's threads are daemon-like anyway)."""

    def __init__(self, *, threads: int = DEFAULT_LOOKUP_THREADS) -> None:
        if threads < 1:
            raise ValueError("at least one lookup thread")
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhooks-dns")

    def close(self) -> None:
        # Lookups in flight finish in the background; nothing waits for a slow name server.
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.run_in_executor(
                self._pool,
                functools.partial(
                    socket.getaddrinfo,
                    host,
                    port,
                    type=socket.SOCK_STREAM,
                    proto=socket.IPPROTO_TCP,
                ),
            )
        except RuntimeError:
            # The pool was shut down (the service is stopping).
            raise ResolutionFailed("the resolver is closed") from None
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
