"""Review findings on the egress package (issue 15 security review), as failing tests.

No test here makes a DNS query or opens a socket: the FakeResolver of tests/conftest.py answers
names, and socket.getaddrinfo is replaced by a function that never leaves the process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from palisade.webhooks.egress import resolver as resolver_module
from palisade.webhooks.egress.addresses import AddressPolicy
from palisade.webhooks.egress.errors import UrlNotAllowed
from palisade.webhooks.egress.resolver import DEFAULT_LOOKUP_THREADS, SystemResolver
from palisade.webhooks.egress.urls import check_webhook_url


async def test_an_internal_name_and_a_missing_name_are_refused_alike(resolver: Any) -> None:
    """Anyone with webhooks:manage can ask the service to resolve any name. If an internal
    name (say postgres.default.svc.cluster.local) is refused with one message and a name that
    does not exist with another, the answers map the cluster's private DNS from outside."""
    resolver.add("db.internal.example", ["10.0.0.5"])  # resolves, to a private address
    # "nothing.internal.example" is not in the table: it does not resolve.
    policy = AddressPolicy()
    with pytest.raises(UrlNotAllowed) as internal:
        await check_webhook_url("https://db.internal.example/", policy=policy, resolver=resolver)
    with pytest.raises(UrlNotAllowed) as missing:
        await check_webhook_url(
            "https://nothing.internal.example/", policy=policy, resolver=resolver
        )
    assert internal.value.code == missing.value.code == "url_not_allowed"
    assert internal.value.message == missing.value.message


async def test_slow_name_servers_do_not_stall_other_lookups(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """getaddrinfo holds its thread for as long as the name server takes, and a lookup whose
    caller gave up (the attempt's 15 s deadline, creation's 5 s) still holds it. Eight such
    lookups (a workspace's endpoints on a name server that never answers, or eight
    CreateWebhook calls naming one) leave no thread for anyone else: every other delivery's
    lookup queues behind them and times out."""
    release = threading.Event()

    def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host == "slow.example":
            release.wait(10.0)  # a name server that does not answer
            raise socket.gaierror(socket.EAI_AGAIN, "timed out")
        if host == "fast.example":
            return [
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))
            ]
        raise AssertionError(f"unexpected lookup of {host}")

    monkeypatch.setattr(resolver_module.socket, "getaddrinfo", fake_getaddrinfo)
    resolver = SystemResolver()
    try:
        for _ in range(DEFAULT_LOOKUP_THREADS):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(resolver.resolve("slow.example", 443), 0.05)
        # Another endpoint's host, answered at once by its name server: it must not wait for
        # the slow ones.
        found = await asyncio.wait_for(resolver.resolve("fast.example", 443), 2.0)
        assert [str(a) for a in found] == ["127.0.0.1"]
    finally:
        release.set()
        resolver.close()


async def test_many_slow_names_of_one_zone_hold_only_that_zones_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wildcard on a name server that never answers gives any number of distinct names
    (a.slow.example, b.slow.example, ...): they share their zone's few threads, so the pool
    still has threads for other zones, and a further name of the slow zone waits (and can be
    given up) instead of taking one."""
    release = threading.Event()
    started: list[str] = []

    def fake_getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        started.append(host)
        if host.endswith(".slow.example"):
            release.wait(10.0)
            raise socket.gaierror(socket.EAI_AGAIN, "timed out")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]

    monkeypatch.setattr(resolver_module.socket, "getaddrinfo", fake_getaddrinfo)
    resolver = SystemResolver(threads=3, per_zone=2)
    try:
        for name in ("a", "b", "c", "d", "e"):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(resolver.resolve(f"{name}.slow.example", 443), 0.05)
        assert sorted(started) == ["a.slow.example", "b.slow.example"]
        for host in ("one.fast.example", "two.other.example"):
            found = await asyncio.wait_for(resolver.resolve(host, 443), 2.0)
            assert [str(a) for a in found] == ["127.0.0.1"]
    finally:
        release.set()
        resolver.close()
