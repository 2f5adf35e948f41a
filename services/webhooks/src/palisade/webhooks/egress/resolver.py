"""Host name resolution for deliveries, behind a Protocol so tests inject answers.

The real resolver asks the operating system (getaddrinfo) for TCP addresses of the host and
returns every distinct one, in the order given: the caller checks them all and connects only to
those (no second lookup anywhere, so no DNS rebinding between the check and the connection).

getaddrinfo blocks a thread for as long as the host's name servers take, and a thread is not
freed when the awaiting attempt gives up. So lookups run in a small pool of their own, never
behind or in front of the service's other work in the loop's default executor (database calls,
among others), and within it each zone (see SystemResolver) holds at most a few threads:
receivers with slow DNS (anyone can register one) queue behind each other, not in front of
everyone. The server gives creation-time checks and deliveries a resolver each.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from palisade.webhooks.egress.addresses import IPAddress, parse_address


class ResolutionFailed(Exception):
    """The host has no address, or the lookup failed. Safe to log: no secret inside."""


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of host (an ASCII name, not an IP literal) for a TCP connection to
        port; at least one, else ResolutionFailed."""
        ...


DEFAULT_LOOKUP_THREADS = 8
# Lookups in flight (threads held, those of callers that gave up included) per zone: the host's
# last two labels, so that "a.slow.example", "b.slow.example", ... (a wildcard on a name server
# that never answers) count together. Two-label public suffixes ("co.uk") share one zone; that
# only costs anything while some of their hosts are slow, and then only to each other.
DEFAULT_LOOKUPS_PER_ZONE = 2


def zone_of(host: str) -> str:
    """The bucket a host's lookups are bounded in: its last two labels."""
    return ".".join(host.rstrip(".").split(".")[-2:])


@dataclass(slots=True)
class _Zone:
    gate: asyncio.Semaphore
    users: int = 0  # holding or waiting for the gate


class SystemResolver:
    """The operating system's resolver (getaddrinfo: /etc/hosts, then DNS), in its own pool of
    `threads` lookup threads. close() when done (the pool's threads are daemon-like anyway).

    A thread stays busy until getaddrinfo returns, whether or not its caller still waits. So:
    a lookup of a (host, port) already in flight joins it instead of taking another thread, and
    at most `per_zone` threads are held per zone (further lookups of the zone wait, cancellably,
    on the event loop). A few hosts on slow name servers then hold a few threads of their
    own zone, never the whole pool."""

    def __init__(
        self, *, threads: int = DEFAULT_LOOKUP_THREADS, per_zone: int = DEFAULT_LOOKUPS_PER_ZONE
    ) -> None:
        if threads < 1 or per_zone < 1:
            raise ValueError("at least one lookup thread, and one per zone")
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhooks-dns")
        self._per_zone = per_zone
        self._in_flight: dict[tuple[str, int], asyncio.Future[list[Any]]] = {}
        self._zones: dict[str, _Zone] = {}

    def close(self) -> None:
        # Lookups in flight finish in the background; nothing waits for a slow name server.
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _leave(self, zone: str, entry: _Zone) -> None:
        entry.users -= 1
        if entry.users == 0:
            # Nobody holds or waits for the zone: forget it (zones are whatever names the
            # workspaces register, so the table must not grow without bound).
            self._zones.pop(zone, None)

    async def _start(self, host: str, port: int) -> asyncio.Future[list[Any]]:
        zone = zone_of(host)
        entry = self._zones.get(zone)
        if entry is None:
            entry = self._zones[zone] = _Zone(asyncio.Semaphore(self._per_zone))
        entry.users += 1
        try:
            await entry.gate.acquire()
        except BaseException:
            self._leave(zone, entry)
            raise
        # Another caller may have started this very lookup while we waited for the zone.
        joined = self._in_flight.get((host, port))
        if joined is not None:
            entry.gate.release()
            self._leave(zone, entry)
            return joined
        loop = asyncio.get_running_loop()
        try:
            lookup = loop.run_in_executor(
                self._pool,
                functools.partial(
                    socket.getaddrinfo,
                    host,
                    port,
                    type=socket.SOCK_STREAM,
                    proto=socket.IPPROTO_TCP,
                ),
            )
        except BaseException:
            entry.gate.release()
            self._leave(zone, entry)
            raise
        self._in_flight[(host, port)] = lookup

        def finished(done: asyncio.Future[list[Any]]) -> None:
            # Runs when the thread is free again, not when the (maybe gone) caller stops.
            if not done.cancelled():
                done.exception()  # retrieved: an abandoned lookup's failure is not an error
            self._in_flight.pop((host, port), None)
            entry.gate.release()
            self._leave(zone, entry)

        lookup.add_done_callback(finished)
        return lookup

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            lookup = self._in_flight.get((host, port)) or await self._start(host, port)
            # shield: a caller giving up must not cancel the lookup others have joined (and
            # cancelling it would not free its thread anyway).
            infos = await asyncio.shield(lookup)
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
