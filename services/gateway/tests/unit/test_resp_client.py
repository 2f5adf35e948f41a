"""The rate limiter's Redis client: RESP2 parsing at every split point, replies matched to
callers in order (a caller that gave up included), the handshake, URL parsing, and failures that
close the connection instead of desynchronising it. Servers are local fakes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable

import pytest

from palisade.gateway.rate_limit.resp_client import (
    ProtocolError,
    RedisAddress,
    ReplyError,
    RespClient,
    _Incomplete,
    encode,
    parse,
)

REPLIES = [
    (b":42\r\n", 42),
    (b":-7\r\n", -7),
    (b"+OK\r\n", b"OK"),
    (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (b"*3\r\n:1\r\n:1766000000000000\r\n$2\r\nab\r\n", [1, 1766000000000000, b"ab"]),
    (b"*2\r\n*1\r\n:1\r\n*0\r\n", [[1], []]),
]


def test_encode_is_an_array_of_bulk_strings() -> None:
    assert encode(b"EVALSHA", "ab", 2, -1) == (
        b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$2\r\n-1\r\n"
    )


@pytest.mark.parametrize(("wire", "value"), REPLIES)
def test_every_reply_parses_whole_and_is_incomplete_at_every_earlier_split(
    wire: bytes, value: object
) -> None:
    assert parse(wire + b":9\r\n", 0) == (value, len(wire))
    for cut in range(len(wire)):
        with pytest.raises(_Incomplete):
            parse(wire[:cut], 0)


def test_an_error_reply_is_a_value_with_its_code() -> None:
    error, end = parse(b"-NOSCRIPT No matching script.\r\n", 0)
    assert isinstance(error, ReplyError)
    assert (error.code, end) == ("NOSCRIPT", 31)


@pytest.mark.parametrize("wire", [b"?1\r\n", b":x\r\n", b"*z\r\n"])
def test_garbage_is_refused(wire: bytes) -> None:
    with pytest.raises((ProtocolError, ValueError)):
        parse(wire, 0)


def test_urls_are_read_as_redis_py_reads_them() -> None:
    plain = RedisAddress.from_url("redis://app:s%40cret@cache.internal:6380/3")
    assert (plain.host, plain.port, plain.db) == ("cache.internal", 6380, 3)
    assert (plain.username, plain.password, plain.tls) == ("app", "s@cret", None)
    secure = RedisAddress.from_url("rediss://cache.internal/0")
    assert secure.tls is not None
    assert secure.tls.verify_mode == ssl.CERT_REQUIRED
    assert secure.tls.check_hostname
    with pytest.raises(ValueError, match="not supported"):
        RedisAddress.from_url("redis://cache.internal/0?health_check_interval=5")


# --- against a scripted local server ----------------------------------------------------------

Handler = Callable[[list[bytes]], bytes | None]


class ScriptedRedis:
    """Answers each command with handler(command parts): bytes to send, or None for silence."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.commands: list[list[bytes]] = []
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._arrived = asyncio.Condition()

    async def received(self, count: int) -> None:
        """Returns once `count` commands have arrived in all."""
        async with self._arrived:
            await self._arrived.wait_for(lambda: len(self.commands) >= count)

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def stop(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def drop_connections(self) -> None:
        for writer in self._writers:
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while header := await reader.readline():
                parts = []
                for _ in range(int(header[1:])):
                    length = int((await reader.readline())[1:])
                    parts.append((await reader.readexactly(length + 2))[:-2])
                self.commands.append(parts)
                async with self._arrived:
                    self._arrived.notify_all()
                answer = self._handler(parts)
                if answer is not None:
                    writer.write(answer)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[[Handler], ScriptedRedis]]:
    servers: list[ScriptedRedis] = []

    def make(handler: Handler) -> ScriptedRedis:
        server = ScriptedRedis(handler)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


def echo_number(parts: list[bytes]) -> bytes:
    return b":%s\r\n" % parts[1]


async def test_concurrent_commands_share_one_write_and_get_their_own_replies(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    server = scripted(echo_number)
    client = RespClient.from_url(await server.start())
    try:
        await client.execute(encode(b"ECHO", 0))  # connected
        writes = client.writes
        replies = await asyncio.gather(*(client.execute(encode(b"ECHO", i)) for i in range(50)))
        assert replies == list(range(50))
        assert client.writes - writes == 1
    finally:
        await client.aclose()


async def test_replies_split_into_single_bytes_still_match(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    server = scripted(lambda parts: None)
    client = RespClient.from_url(await server.start())
    try:
        pending = [asyncio.ensure_future(client.execute(encode(b"N", i))) for i in range(3)]
        await server.received(3)
        wire = b"*2\r\n:0\r\n$1\r\na\r\n:1\r\n-ERR no\r\n"
        writer = server._writers[0]
        for index in range(len(wire)):
            writer.write(wire[index : index + 1])
            await writer.drain()
        assert await pending[0] == [0, b"a"]
        assert await pending[1] == 1
        with pytest.raises(ReplyError, match="ERR no"):
            await pending[2]
    finally:
        await client.aclose()


async def test_a_caller_that_gives_up_does_not_shift_the_next_callers_reply(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    held: list[bytes] = []

    def slow_first(parts: list[bytes]) -> bytes | None:
        if parts[1] == b"1":
            held.append(b":1\r\n")  # answered later, together with the second
            return None
        return b"".join(held) + echo_number(parts)

    server = scripted(slow_first)
    client = RespClient.from_url(await server.start())
    try:
        first = asyncio.ensure_future(client.execute(encode(b"N", 1)))
        await server.received(1)
        first.cancel()
        assert await client.execute(encode(b"N", 2)) == 2
    finally:
        await client.aclose()


async def test_silence_fails_everything_waiting_and_the_next_call_reconnects(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    silent = {"on": True}
    server = scripted(lambda parts: None if silent["on"] else echo_number(parts))
    client = RespClient.from_url(await server.start(), reply_timeout=0.1)
    try:
        results = await asyncio.gather(
            *(client.execute(encode(b"N", i)) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, TimeoutError) for r in results)
        silent["on"] = False
        assert await client.execute(encode(b"N", 7)) == 7
        assert server.connections == 2
    finally:
        await client.aclose()


async def test_a_dropped_connection_fails_its_waiters_then_reconnects(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    answering = {"on": False}
    server = scripted(lambda parts: echo_number(parts) if answering["on"] else None)
    client = RespClient.from_url(await server.start())
    try:
        waiting = asyncio.ensure_future(client.execute(encode(b"N", 1)))
        await server.received(1)
        server.drop_connections()
        with pytest.raises(ConnectionError):
            await waiting
        answering["on"] = True
        assert await client.execute(encode(b"N", 2)) == 2
    finally:
        await client.aclose()


async def test_an_unreadable_reply_closes_the_connection(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    server = scripted(lambda parts: b"HTTP/1.1 400 Bad Request\r\n\r\n")
    client = RespClient.from_url(await server.start())
    try:
        with pytest.raises(ProtocolError):
            await client.execute(encode(b"N", 1))
    finally:
        await client.aclose()


async def test_handshake_sends_auth_and_select_and_a_refusal_is_a_connection_error(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    def acl(parts: list[bytes]) -> bytes:
        if parts[0] == b"AUTH":
            return b"+OK\r\n" if parts[1:] == [b"app", b"right"] else b"-WRONGPASS invalid\r\n"
        return b"+OK\r\n" if parts[0] == b"SELECT" else echo_number(parts)

    server = scripted(acl)
    url = await server.start()
    good = RespClient.from_url(url.replace("//", "//app:right@").replace("/0", "/4"))
    bad = RespClient.from_url(url.replace("//", "//app:wrong@"))
    try:
        assert await good.execute(encode(b"N", 3)) == 3
        assert server.commands[:3] == [[b"AUTH", b"app", b"right"], [b"SELECT", b"4"], [b"N", b"3"]]
        with pytest.raises(ConnectionError, match="WRONGPASS") as refused:
            await bad.execute(encode(b"N", 1))
        assert "wrong" not in str(refused.value)  # never the password
    finally:
        await good.aclose()
        await bad.aclose()
