"""The rate limiter's Redis client: RESP2 parsing at every split point, replies matched to
callers in order (a caller that gave up included), the handshake, URL parsing, and failures that
close the connection instead of desynchronising it. Servers are local fakes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import gc
import ssl
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from palisade.common.clock import ManualClock
from palisade.gateway.rate_limit import RateLimiterUnavailable, RedisRateLimiter
from palisade.gateway.rate_limit.model import Limit, Subject
from palisade.gateway.rate_limit.resp_client import (
    BACKOFF_FIRST_SECONDS,
    BACKOFF_MAX_SECONDS,
    MAX_DEPTH,
    BackingOff,
    ClientClosed,
    ProtocolError,
    RedisAddress,
    ReplyError,
    RespClient,
    _Incomplete,
    encode,
    parse,
)

PASSWORD = "hunter2-s3cret"

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


# --- secrets stay out of reprs and errors -----------------------------------------------------


def texts_of(error: BaseException) -> str:
    """Everything an exception could show: its message, repr and whole chain as logged."""
    return "".join(traceback.format_exception(error)) + repr(error)


def test_the_password_is_in_no_repr() -> None:
    address = RedisAddress.from_url(f"redis://app:{PASSWORD}@cache.internal:6380/3")
    assert address.password == PASSWORD
    assert PASSWORD not in repr(address)
    assert PASSWORD not in str(address)
    assert "cache.internal" in repr(address)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://app:{PASSWORD}/x@cache.internal/0",  # an unescaped '/': redis-py's port
        f"http://app:{PASSWORD}@cache.internal/0",
        f"redis://app:{PASSWORD}@cache.internal/0?socket_timeout=abc",
        f"redis://app:{PASSWORD}@cache.internal/0?health_check_interval=5",
        f"redis://app:{PASSWORD}@cache.internal:99999/0",
    ],
)
def test_no_url_error_quotes_the_password(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        RedisAddress.from_url(url)
    assert PASSWORD not in texts_of(refused.value)
    assert "hunter2" not in texts_of(refused.value)


@pytest.mark.parametrize("url", ["redis://app@cache.internal/0", "redis://app:@cache.internal/0"])
def test_a_user_without_a_password_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="needs a password"):
        RedisAddress.from_url(url)
    with pytest.raises(ValueError, match="needs a password"):
        RedisAddress(username="app")
    assert RedisAddress.from_url("redis://:only-a-password@cache.internal/0").username is None


async def test_a_refused_auth_shows_the_password_nowhere(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    server = scripted(lambda parts: b"-WRONGPASS invalid username-password pair\r\n")
    url = (await server.start()).replace("//", f"//app:{PASSWORD}@")
    resp = RespClient.from_url(url)
    limiter = RedisRateLimiter(resp, clock=ManualClock())
    try:
        with pytest.raises(ConnectionError) as refused:
            await resp.execute(encode(b"N", 1))
        assert PASSWORD not in texts_of(refused.value)
        resp._retry_at = 0  # past the backoff, for the limiter's own attempt
        with pytest.raises(RateLimiterUnavailable) as unavailable:
            await limiter.check([Subject("key", "key:a", Limit(10, 10))])
        assert PASSWORD not in texts_of(unavailable.value)
        assert server.commands[0] == [b"AUTH", b"app", PASSWORD.encode()]
    finally:
        await resp.aclose()


# --- nesting ----------------------------------------------------------------------------------


def test_arrays_nest_up_to_the_limit_and_no_deeper() -> None:
    deepest = b"*1\r\n" * MAX_DEPTH + b":1\r\n"
    value, end = parse(deepest, 0)
    assert end == len(deepest)
    for _ in range(MAX_DEPTH):
        [value] = value
    assert value == 1
    with pytest.raises(ProtocolError, match="nested"):
        parse(b"*1\r\n" + deepest, 0)
    with pytest.raises(ProtocolError, match="nested"):
        parse(b"*1\r\n" * 100_000 + b":1\r\n", 0)  # not a RecursionError


async def test_a_deeply_nested_reply_drops_the_connection_and_fails_its_waiters(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    hostile = {"on": True}

    def handler(parts: list[bytes]) -> bytes | None:
        if parts[1] == b"2":
            return None  # the second waits behind the first
        if hostile["on"]:
            return b"*1\r\n" * 50_000 + b":1\r\n" + b":2\r\n"
        return echo_number(parts)

    server = scripted(handler)
    client = RespClient.from_url(await server.start(), reply_timeout=30)
    try:
        first = asyncio.ensure_future(client.execute(encode(b"N", 1)))
        second = asyncio.ensure_future(client.execute(encode(b"N", 2)))
        results = await asyncio.wait_for(
            asyncio.gather(first, second, return_exceptions=True), timeout=5
        )
        assert all(isinstance(r, ProtocolError) for r in results), results
        hostile["on"] = False
        assert await client.execute(encode(b"N", 3)) == 3  # a fresh connection
        assert server.connections == 2
    finally:
        await client.aclose()


# --- backoff after a failed connection attempt ------------------------------------------------


def refusing_auth(refusing: dict[str, bool]) -> Handler:
    """AUTH refused while refusing["on"]; HOLD never answered; anything else echoed."""

    def handler(parts: list[bytes]) -> bytes | None:
        if parts[0] == b"AUTH":
            return b"-WRONGPASS invalid\r\n" if refusing["on"] else b"+OK\r\n"
        return None if parts[0] == b"HOLD" else echo_number(parts)

    return handler


async def drop_and_notice(server: ScriptedRedis, client: RespClient) -> None:
    """The server drops the connection and the client has seen it go (a command it was
    waiting on failed)."""
    held = asyncio.ensure_future(client.execute(encode(b"HOLD")))
    await server.received(len(server.commands) + 1)
    server.drop_connections()
    with pytest.raises(ConnectionError):
        await held


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_failed_connect_backs_off_growing_and_a_success_resets_it(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    refusing = {"on": True}

    server = scripted(refusing_auth(refusing))
    url = (await server.start()).replace("//", "//app:pw@")
    time = FakeMonotonic()
    client = RespClient.from_url(url, monotonic=time)

    async def attempts_after(wait: float) -> int:
        """Moves time just short of `wait`: still backing off (no connection made); then just
        past it: one new attempt, refused. Returns the connections made so far."""
        before = server.connections
        time.now += wait - 0.001
        for _ in range(3):
            with pytest.raises(BackingOff):
                await client.execute(encode(b"N", 0))
        assert server.connections == before
        time.now += 0.002
        with pytest.raises(ConnectionError, match="WRONGPASS"):
            await client.execute(encode(b"N", 0))
        return server.connections

    try:
        with pytest.raises(ConnectionError, match="WRONGPASS"):
            await client.execute(encode(b"N", 0))
        assert server.connections == 1
        waits = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
        assert (waits[0], waits[-1]) == (BACKOFF_FIRST_SECONDS, BACKOFF_MAX_SECONDS)
        for attempt, wait in enumerate(waits, start=2):
            assert await attempts_after(wait) == attempt
        refusing["on"] = False
        time.now += 2.0
        assert await client.execute(encode(b"N", 5)) == 5
        # A lost connection is not a failed attempt: the next command reconnects at once, and
        # a refusal then starts the backoff from its first step again.
        refusing["on"] = True
        await drop_and_notice(server, client)
        before = server.connections
        with pytest.raises(ConnectionError, match="WRONGPASS"):
            await client.execute(encode(b"N", 6))
        assert server.connections == before + 1
        assert await attempts_after(0.05) == before + 2
    finally:
        await client.aclose()


async def test_a_blackholed_redis_costs_one_connect_timeout_not_one_per_check() -> None:
    # Accepts the connection, never answers AUTH: each attempt waits out connect_timeout.
    silent: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)
        await reader.read()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    time = FakeMonotonic()
    resp = RespClient.from_url(
        f"redis://:pw@127.0.0.1:{port}/0", connect_timeout=0.2, monotonic=time
    )
    limiter = RedisRateLimiter(resp, clock=ManualClock())
    subjects = [Subject("key", "key:a", Limit(10, 10))]
    try:
        with pytest.raises(RateLimiterUnavailable):
            await limiter.check(subjects)
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(50):
            with pytest.raises(RateLimiterUnavailable):
                await limiter.check(subjects)
        assert loop.time() - started < 0.15  # fifty checks, none waited for a connect
        assert len(silent) == 1
    finally:
        await resp.aclose()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()


# --- write counting, closing, shared attempts -------------------------------------------------


async def test_writes_count_each_write_once_across_a_failed_reconnect(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    refusing = {"on": False}
    server = scripted(refusing_auth(refusing))
    time = FakeMonotonic()
    url = (await server.start()).replace("//", "//app:pw@")
    client = RespClient.from_url(url, monotonic=time)
    try:
        for i in range(3):
            await client.execute(encode(b"N", i))
        refusing["on"] = True
        await drop_and_notice(server, client)
        assert client.writes == 5  # AUTH, three commands, the one the drop failed
        with pytest.raises(ConnectionError, match="WRONGPASS"):  # a refused reconnect
            await client.execute(encode(b"N", 9))
        assert client.writes == 5
        refusing["on"] = False
        time.now += BACKOFF_MAX_SECONDS
        assert await client.execute(encode(b"N", 9)) == 9
        assert client.writes == 7  # + AUTH and the command on the new connection
    finally:
        await client.aclose()


async def test_close_cancels_a_connection_attempt_and_every_later_call_fails_clearly(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    server = scripted(lambda parts: None)  # never answers AUTH
    url = (await server.start()).replace("//", "//app:pw@")
    client = RespClient.from_url(url, connect_timeout=30)
    pending = asyncio.ensure_future(client.execute(encode(b"N", 1)))
    await server.received(1)
    await asyncio.wait_for(client.aclose(), timeout=2)
    with pytest.raises(ClientClosed):
        await asyncio.wait_for(pending, timeout=2)
    with pytest.raises(ClientClosed):
        await client.execute(encode(b"N", 2))
    assert server.connections == 1


async def test_a_closed_client_does_not_reconnect(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    server = scripted(echo_number)
    client = RespClient.from_url(await server.start())
    assert await client.execute(encode(b"N", 1)) == 1
    await client.aclose()
    for _ in range(3):
        with pytest.raises(ClientClosed):
            await client.execute(encode(b"N", 2))
    assert server.connections == 1
    assert isinstance(ClientClosed(), OSError)  # the limiter's "unavailable", never a 500


async def test_an_attempt_whose_callers_all_gave_up_logs_no_unretrieved_exception(
    scripted: Callable[[Handler], ScriptedRedis],
) -> None:
    loop = asyncio.get_running_loop()
    logged: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: logged.append(context))
    answer, connected = asyncio.Event(), asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def refuse_later(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        connected.set()
        await reader.readline()
        await answer.wait()
        writer.write(b"-WRONGPASS invalid\r\n")
        await writer.drain()

    server = await asyncio.start_server(refuse_later, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    time = FakeMonotonic()
    client = RespClient.from_url(f"redis://:pw@127.0.0.1:{port}/0", monotonic=time)
    try:
        caller = asyncio.ensure_future(client.execute(encode(b"N", 1)))
        await connected.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        answer.set()
        attempt = client._connecting
        assert attempt is not None
        await asyncio.wait([attempt])  # failed, with nobody left awaiting it
        del attempt, caller
        time.now += BACKOFF_MAX_SECONDS
        answer.clear()
        second = asyncio.ensure_future(client.execute(encode(b"N", 2)))  # drops the old task
        await asyncio.sleep(0)
        gc.collect()
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        gc.collect()
        assert [c for c in logged if "never retrieved" in str(c.get("message"))] == []
    finally:
        loop.set_exception_handler(previous)
        answer.set()
        await client.aclose()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


# --- one reply timer per connection -----------------------------------------------------------


class TimerCountingLoop(asyncio.SelectorEventLoop):
    """The standard loop, keeping every timer it hands out (uvloop's cannot be watched)."""

    def __init__(self) -> None:
        super().__init__()
        self.timers: list[asyncio.TimerHandle] = []

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        handle = super().call_at(when, callback, *args, context=context)
        self.timers.append(handle)
        return handle

    def live_reply_timers(self) -> list[asyncio.TimerHandle]:
        """Armed timers far in the future: only the 60 s reply timers of the test's client."""
        return [t for t in self.timers if not t.cancelled() and t.when() > self.time() + 30]


def run_on_counting_loop(
    scenario: Callable[[TimerCountingLoop], Coroutine[Any, Any, None]],
) -> None:
    with asyncio.Runner(loop_factory=TimerCountingLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, TimerCountingLoop)
        runner.run(scenario(loop))


def test_one_reply_timer_per_connection_not_one_per_write() -> None:
    async def scenario(loop: TimerCountingLoop) -> None:
        server = ScriptedRedis(echo_number)
        client = RespClient.from_url(await server.start(), connect_timeout=5, reply_timeout=60)
        try:
            most = 0
            for i in range(100):  # a hundred writes, each answered
                assert await client.execute(encode(b"N", i)) == i
                most = max(most, len(loop.live_reply_timers()))
            assert client.writes == 100
            assert most <= 1
            assert loop.live_reply_timers() == []  # nothing owed: no timer armed
        finally:
            await client.aclose()
            await server.stop()

    run_on_counting_loop(scenario)


def test_the_reply_timer_follows_the_oldest_unanswered_write() -> None:
    async def scenario(loop: TimerCountingLoop) -> None:
        server = ScriptedRedis(lambda parts: None)  # answered by hand below
        client = RespClient.from_url(await server.start(), connect_timeout=5, reply_timeout=60)
        try:
            first = asyncio.ensure_future(client.execute(encode(b"N", 1)))
            await server.received(1)
            [timer] = loop.live_reply_timers()
            first_deadline = timer.when()
            second_written_after = loop.time()
            second = asyncio.ensure_future(client.execute(encode(b"N", 2)))
            await server.received(2)
            assert loop.live_reply_timers() == [timer]  # still the first write's deadline
            assert first_deadline < second_written_after + 60
            writer = server._writers[0]
            writer.write(b":1\r\n")
            await writer.drain()
            assert await first == 1
            [moved] = loop.live_reply_timers()
            assert moved.when() >= second_written_after + 60  # now the second write's
            writer.write(b":2\r\n")
            await writer.drain()
            assert await second == 2
            assert loop.live_reply_timers() == []
        finally:
            await client.aclose()
            await server.stop()

    run_on_counting_loop(scenario)
