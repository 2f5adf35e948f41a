"""A minimal pipelining Redis client for the one command on every request's path (P4).

redis-py spends 60-70 us of CPU per pipelined EVALSHA (a pipeline object per batch, a pool
checkout, command packing through several layers, a read loop and a generic parser), which is
as much as the rest of a cached request through the gateway. This client keeps one connection
and writes every command issued during one event-loop turn in a single write; Redis answers
in order, so replies are matched to callers first-in first-out. It speaks RESP2 and knows only
what the limiter needs: integers, strings, arrays, nil and errors.

Failure is simple on purpose: a lost connection, a protocol error or a reply that has not come
within `reply_timeout` seconds of its write closes the connection and fails every command still
waiting (ConnectionError or TimeoutError, both OSError-like to callers); the next command
connects again. Nothing is retried here: the caller decides what an unanswered check means.

Connection settings come from the same URL redis-py takes (redis://, rediss:// with TLS,
user and password, database number), parsed by redis-py so both read a URL alike; options this
client does not implement are refused at start-up rather than ignored.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio.connection import SSLConnection, parse_url

# A reply: int, bytes, None (nil), a list of replies, or a ReplyError.
Reply = Any


class ReplyError(Exception):
    """Redis answered this command with an error (the connection itself is fine)."""

    @property
    def code(self) -> str:
        """The error's first word: ERR, NOSCRIPT, READONLY, WRONGTYPE, ..."""
        return str(self).split(" ", 1)[0]


class ProtocolError(ConnectionError):
    """Bytes that are not RESP2: whatever is on the other end is not a Redis we understand."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        options: dict[str, Any] = dict(parse_url(url))
        tls: ssl.SSLContext | None = None
        if options.pop("connection_class", None) is SSLConnection:
            tls = ssl.create_default_context(cafile=options.pop("ssl_ca_certs", None))
            if options.pop("ssl_cert_reqs", "required") in ("none", ssl.CERT_NONE):
                tls.check_hostname = False
                tls.verify_mode = ssl.CERT_NONE
        address = cls(
            host=str(options.pop("host", "127.0.0.1")),
            port=int(options.pop("port", 6379)),
            db=int(options.pop("db", 0)),
            username=options.pop("username", None),
            password=options.pop("password", None),
            tls=tls,
        )
        if options:
            raise ValueError(f"Redis URL options not supported here: {sorted(options)}")
        return address


def encode(*args: bytes | str | int) -> bytes:
    """One command in RESP2 (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def parse(buffer: bytes | bytearray, position: int) -> tuple[Reply, int]:
    """The reply starting at `position` and where the next one starts (raises _Incomplete)."""
    end = buffer.find(b"\r\n", position)
    if end < 0:
        raise _Incomplete
    kind = buffer[position]
    line = buffer[position + 1 : end]
    if kind == 0x3A:  # ':' integer
        return int(line), end + 2
    if kind == 0x2A:  # '*' array
        count = int(line)
        position = end + 2
        if count < 0:
            return None, position
        items = []
        for _ in range(count):
            item, position = parse(buffer, position)
            items.append(item)
        return items, position
    if kind == 0x24:  # '$' bulk string
        length = int(line)
        position = end + 2
        if length < 0:
            return None, position
        if len(buffer) < position + length + 2:
            raise _Incomplete
        return bytes(buffer[position : position + length]), position + length + 2
    if kind == 0x2B:  # '+' simple string
        return bytes(line), end + 2
    if kind == 0x2D:  # '-' error
        return ReplyError(bytes(line).decode("utf-8", "replace")), end + 2
    raise ProtocolError("not a RESP2 reply")


class _Connection(asyncio.Protocol):
    """One socket: writes queued during a loop turn go out together; replies resolve the oldest
    waiting future."""

    def __init__(self, loop: asyncio.AbstractEventLoop, reply_timeout: float) -> None:
        self._loop = loop
        self._reply_timeout = reply_timeout
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._buffer = bytearray()
        self._sent = 0
        self._answered = 0
        self.closed = False
        self.writes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Reply]:
        future: asyncio.Future[Reply] = self._loop.create_future()
        if self.closed:
            future.set_exception(ConnectionError("Redis connection closed"))
            return future
        self._waiting.append(future)
        self._outgoing.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or not self._outgoing or self._transport is None:
            return
        data = b"".join(self._outgoing)
        self._sent += len(self._outgoing)
        self._outgoing = []
        self.writes += 1
        self._transport.write(data)
        # One timer per write, not per command: if the last command of this write is still
        # unanswered when it fires, Redis is too slow to count on.
        self._loop.call_later(self._reply_timeout, self._check_answered, self._sent)

    def _check_answered(self, sent: int) -> None:
        if not self.closed and self._answered < sent:
            self.fail(TimeoutError("Redis did not answer in time"))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        position = 0
        try:
            while position < len(buffer):
                reply, position = parse(buffer, position)
                self._answered += 1
                if not self._waiting:
                    raise ProtocolError("a reply nobody asked for")
                future = self._waiting.popleft()
                if not future.done():  # its caller may have given up
                    future.set_result(reply)
        except _Incomplete:
            pass
        except (ProtocolError, ValueError, IndexError) as error:
            self.fail(ProtocolError(f"unreadable reply: {type(error).__name__}"))
            return
        del buffer[:position]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError("Redis connection lost"))

    def fail(self, error: Exception) -> None:
        """Close the connection and fail every command still waiting on it."""
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self._outgoing = []


class RespClient:
    """Commands pipelined on one lazily (re)connected connection."""

    def __init__(
        self, address: RedisAddress, *, connect_timeout: float = 1.0, reply_timeout: float = 1.0
    ) -> None:
        self._address = address
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._writes_before = 0

    @classmethod
    def from_url(cls, url: str, **timeouts: float) -> RespClient:
        return cls(RedisAddress.from_url(url), **timeouts)

    @property
    def writes(self) -> int:
        """Socket writes so far (each carries every command issued in one loop turn)."""
        current = self._connection.writes if self._connection is not None else 0
        return self._writes_before + current

    async def execute(self, command: bytes) -> Reply:
        """The reply to one encoded command (ReplyError raised; OSError when unreachable)."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        reply = await connection.send(command)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def _connect(self) -> _Connection:
        # Concurrent callers share one connection attempt.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        if self._connection is not None:
            self._writes_before += self._connection.writes
        loop = asyncio.get_running_loop()
        address = self._address
        async with asyncio.timeout(self._connect_timeout):
            _, connection = await loop.create_connection(
                lambda: _Connection(loop, self._reply_timeout),
                address.host,
                address.port,
                ssl=address.tls,
                server_hostname=address.host if address.tls else None,
            )
            handshake = []
            if address.password is not None:
                credentials = [address.password]
                if address.username is not None:
                    credentials.insert(0, address.username)
                handshake.append(connection.send(encode(b"AUTH", *credentials)))
            if address.db:
                handshake.append(connection.send(encode(b"SELECT", address.db)))
            try:
                for reply in await asyncio.gather(*handshake):
                    if isinstance(reply, ReplyError):
                        raise ConnectionError(f"Redis refused the connection: {reply.code}")
            except BaseException:
                connection.fail(ConnectionError("Redis handshake failed"))
                raise
        self._connection = connection
        return connection

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.fail(ConnectionError("client closed"))
