"""Test doubles for the webhooks service's egress: answers instead of DNS, and a connector that
records what would have been dialled.

THE NETWORK RULE (no test sends a packet outside 127.0.0.0/8 or ::1, even with the address
guard broken) holds because of these two, not because of the code under test:
- FakeResolver answers from a table the test wrote and raises for any other host, so no
  test ever makes a DNS query;
- LoopbackOnlyConnector is the only thing that makes sockets for the delivery client (the
  client hands aiohttp a socket factory that calls it; aiohttp has no other way to a socket),
  and it raises before a socket exists for any address outside 127.0.0.0/8 and ::1. If the
  policy wrongly allowed 10.0.0.1, the attempt would end as connect_failed with 10.0.0.1 in
  `dialled`, and no packet would leave.
`test_every_socket_comes_from_the_connector` (test_egress) checks that last claim.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import defaultdict, deque

import pytest

from palisade.webhooks.egress.addresses import IPAddress, parse_address
from palisade.webhooks.egress.resolver import ResolutionFailed

_LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")


class FakeResolver:
    """Answers per host, in order: each call takes the next answer, the last one repeats
    (so [public, loopback] is a host whose second lookup rebinds)."""

    def __init__(self) -> None:
        self._answers: dict[str, deque[list[IPAddress]]] = {}
        self.calls: defaultdict[str, int] = defaultdict(int)

    def add(self, host: str, *answers: list[str]) -> None:
        self._answers[host] = deque([parse_address(a) for a in answer] for answer in answers)

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        self.calls[host] += 1
        answers = self._answers.get(host)
        if not answers:
            raise ResolutionFailed("no such host in the test's table")
        return list(answers.popleft() if len(answers) > 1 else answers[0])


def is_loopback(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv4Address):
        return address in _LOOPBACK_V4
    return address == _LOOPBACK_V6


class LoopbackOnlyConnector:
    """Records every (address, port) the client asks for; refuses all but loopback."""

    def __init__(self) -> None:
        self.dialled: list[tuple[str, int]] = []

    def open_socket(
        self, address: IPAddress, port: int, *, family: int, type: int, proto: int
    ) -> socket.socket:
        self.dialled.append((str(address), port))
        if not is_loopback(address):
            raise ConnectionRefusedError(f"test network rule: {address} is not loopback")
        return socket.socket(family, type, proto)


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver()


@pytest.fixture
def connector() -> LoopbackOnlyConnector:
    return LoopbackOnlyConnector()
