"""A minimal pipelining Redis client for the one command on every request's path (P4).

redis-py spends 60-70 us of CPU per pipelined EVALSHA (a pipeline object per batch, a pool
checkout, command packing through several layers, a read loop and a generic parser), which is
as much as the rest of a cached request through the gateway. This client keeps one connection
and writes every command issued during one event-loop turn in a single write; Redis answers
in order, so replies are matched to callers first-in first-out. It speaks RESP2 and knows only
what the limiter needs: integers, strings, arrays (nested at most MAX_DEPTH deep), nil and
errors.

Failure is simple on purpose: a lost connection, a protocol error or a reply that has not come
within `reply_timeout` seconds of its write closes the connection and fails every command still
waiting (ConnectionError or TimeoutError, both OSError to callers); the next command connects
again. A connection attempt that fails (refused, timed out, handshake refused) starts a short
backoff (50 ms, doubling to 2 s, reset by the next success) during which commands fail at once
with BackingOff (a ConnectionError) instead of each waiting out `connect_timeout` against a
Redis that is not there. Nothing is retried here: the caller decides what an unanswered check
means.

Connection settings come from the same URL redis-py takes (redis://, rediss:// with TLS,
user and password, database number), parsed by redis-py so both read a URL alike; options this
client does not implement are refused at start-up rather than ignored. The password never
appears in a repr or in an exception this module raises.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio.connection import SSLConnection, parse_url

# A reply: int, bytes, None (nil), a list of replies, or a ReplyError.
Reply = Any

# How deeply arrays may nest in one reply. The limiter's script answers a flat array; the
# bound keeps a hostile or broken peer from driving the recursive parser into RecursionError.
MAX_DEPTH = 32
# Backoff after a failed connection attempt: the first wait, and the most it grows to.
BACKOFF_FIRST_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 2.0


class ReplyError(Exception):
    """Redis answered this command with an error (the connection itself is fine)."""

    @property
    def code(self) -> str:
        """The error's first word: ERR, NOSCRIPT, READONLY, WRONGTYPE, ..."""
        return str(self).split(" ", 1)[0]


class ProtocolError(ConnectionError):
    """Bytes that are not RESP2: whatever is on the other end is not a Redis we understand."""


class BackingOff(ConnectionError):
    """The last connection attempt failed moments ago; no new one is made until its backoff
    has passed."""


class ClientClosed(ConnectionError):
    """The client was closed (the gateway is shutting down): it sends nothing any more."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        # Redis would take AUTH <user> <password> only; a user alone would be silently
        # ignored and the connection made as the default user instead.
        if self.username is not None and not self.password:
            raise ValueError("a Redis user needs a password (redis://user:password@host)")

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        options = _parsed(url)
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


def _parsed(url: str) -> dict[str, Any]:
    """redis-py's reading of the URL. Its errors can quote parts of the URL (a password with
    an unescaped '/' or ':' lands in the port), so they are replaced by one that quotes nothing
    and, raised outside the handler, does not carry the original as its context either."""
    try:
        return dict(parse_url(url))
    except (ValueError, TypeError) as error:
        kind = type(error).__name__
    raise ValueError(f"not a usable Redis URL ({kind}; the URL is not repeated here)")


def encode(*args: bytes | str | int) -> bytes:
    """One command in RESP2 (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Incomplete(Exception):
    """The buffer ends inside a reply: wait for more bytes."""


def parse(buffer: bytes | bytearray, position: int, depth: int = 0) -> tuple[Reply, int]:
    """The reply starting at `position` and where the next one starts (raises _Incomplete;
    ProtocolError for bytes that are not RESP2 or arrays nested deeper than MAX_DEPTH)."""
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
        if depth >= MAX_DEPTH:
            raise ProtocolError("arrays nested too deeply")
        items = []
        for _ in range(count):
            item, position = parse(buffer, position, depth + 1)
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
    waiting future.

    One reply timer per connection, armed for the deadline of the oldest write still owed a
    reply (Redis answers in order, so nothing later can be answered first) and moved to the
    next write's deadline, or cancelled, as that write's replies arrive.
    """

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
        # Writes owed replies, oldest first: (commands sent up to and including it, deadline).
        self._unanswered_writes: deque[tuple[int, float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
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
        deadline = self._loop.time() + self._reply_timeout
        self._unanswered_writes.append((self._sent, deadline))
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed or not self._unanswered_writes:
            return
        deadline = self._unanswered_writes[0][1]
        if deadline <= self._loop.time():
            self.fail(TimeoutError("Redis did not answer in time"))
        else:  # a clock's rounding: not yet due
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _forget_answered_writes(self) -> None:
        writes = self._unanswered_writes
        if not writes or writes[0][0] > self._answered:
            return  # the oldest write is still owed a reply: its timer stands
        while writes and writes[0][0] <= self._answered:
            writes.popleft()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if writes:
            self._timer = self._loop.call_at(writes[0][1], self._on_timer)

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
            # Our own messages only: a ValueError would quote the peer's bytes.
            detail = str(error) if isinstance(error, ProtocolError) else type(error).__name__
            self.fail(ProtocolError(f"unreadable reply: {detail}"))
            return
        del buffer[:position]
        self._forget_answered_writes()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError("Redis connection lost"))

    def fail(self, error: Exception) -> None:
        """Close the connection and fail every command still waiting on it."""
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unanswered_writes.clear()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self._outgoing = []


def retrieve_exception(task: asyncio.Task[Any]) -> None:
    """Marks a shared task's failure as seen: every caller awaiting it may have given up
    (shield), and asyncio would then log 'Task exception was never retrieved'."""
    if not task.cancelled():
        task.exception()


class RespClient:
    """Commands pipelined on one lazily (re)connected connection."""

    def __init__(
        self,
        address: RedisAddress,
        *,
        connect_timeout: float = 1.0,
        reply_timeout: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`monotonic` tells the time (seconds) the connect backoff is measured by; tests
        pass their own to move it."""
        self._address = address
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._monotonic = monotonic
        self._connection: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._writes_before = 0
        self._failed_attempts = 0
        self._retry_at = 0.0
        self._closed = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        connect_timeout: float = 1.0,
        reply_timeout: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> RespClient:
        return cls(
            RedisAddress.from_url(url),
            connect_timeout=connect_timeout,
            reply_timeout=reply_timeout,
            monotonic=monotonic,
        )

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
        if self._closed:
            raise ClientClosed("Redis client closed")
        # Concurrent callers share one connection attempt.
        if self._connecting is None or self._connecting.done():
            wait = self._retry_at - self._monotonic()
            if wait > 0:
                raise BackingOff(f"Redis unreachable; next connection attempt in {wait:.2f} s")
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(retrieve_exception)
        try:
            return await asyncio.shield(self._connecting)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closed and (current is None or not current.cancelling()):
                # The attempt was cancelled by aclose(), not this caller: say so plainly.
                raise ClientClosed("Redis client closed while connecting") from None
            raise

    async def _open(self) -> _Connection:
        try:
            connection = await self._open_connection()
        except Exception:
            # Grow the wait before the next attempt: 50 ms, 100 ms, ... 2 s.
            self._failed_attempts += 1
            backoff = BACKOFF_FIRST_SECONDS * 2 ** min(self._failed_attempts - 1, 16)
            self._retry_at = self._monotonic() + min(backoff, BACKOFF_MAX_SECONDS)
            raise
        if self._closed:  # closed while the handshake finished
            connection.fail(ClientClosed("Redis client closed"))
            raise ClientClosed("Redis client closed while connecting")
        self._failed_attempts = 0
        self._retry_at = 0.0
        if self._connection is not None:  # the connection this one replaces
            self._writes_before += self._connection.writes
        self._connection = connection
        return connection

    async def _open_connection(self) -> _Connection:
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
        return connection

    async def aclose(self) -> None:
        """Closes the connection and cancels a connection attempt under way; every command
        after this fails with ClientClosed."""
        self._closed = True
        connecting = self._connecting
        if connecting is not None and not connecting.done():
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
        if self._connection is not None:
            self._connection.fail(ClientClosed("Redis client closed"))
