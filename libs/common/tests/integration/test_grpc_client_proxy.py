"""Internal gRPC channels ignore the proxy variables of the environment: a local "proxy" (a
TCP listener that records connections) is named in every variable gRPC reads, and a channel
made by palisade.common.grpc_client still reaches a local gRPC server directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from palisade.common.grpc_client import insecure_channel, relay_channel

PROXY_VARIABLES = ("grpc_proxy", "https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY")


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[int, list[str]]]:
    seen: list[str] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append((await reader.readline()).decode("latin-1"))  # "CONNECT host:port"
        finally:
            writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port, seen
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def grpc_port() -> AsyncIterator[int]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


@pytest.mark.parametrize("make", [insecure_channel, relay_channel])
async def test_channels_do_not_go_through_an_environment_proxy(
    make: Callable[[str], grpc.aio.Channel],
    proxy: tuple[int, list[str]],
    grpc_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy_port, seen = proxy
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy_port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    channel = make(f"127.0.0.1:{grpc_port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), 5.0)
    finally:
        await channel.close()
    assert seen == []


async def test_the_proxy_would_be_used_without_the_option(
    proxy: tuple[int, list[str]], grpc_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: a plain channel with the same environment goes to the proxy."""
    proxy_port, seen = proxy
    for name in PROXY_VARIABLES:
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy_port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(channel.channel_ready(), 1.0)
    finally:
        await channel.close()
    assert seen
    assert seen[0].startswith(f"CONNECT 127.0.0.1:{grpc_port}")
