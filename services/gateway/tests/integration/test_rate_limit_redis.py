"""The Redis rate limiter on a real Redis: exact under 200 parallel checks and across two
gateways, all-or-nothing over the key and the user, one round trip per check, the same decisions
as the in-process limiter for the same clock, and RateLimiterUnavailable (quickly) when Redis
cannot answer. Time is a ManualClock throughout; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from palisade.common.clock import ManualClock
from palisade.gateway.rate_limit import (
    Limit,
    LocalRateLimiter,
    RateLimiter,
    RateLimiterUnavailable,
    RedisRateLimiter,
    Subject,
    rate_limit_headers,
)
from palisade.gateway.rate_limit.redis_limiter import EXPIRY_SLACK_MS
from palisade.gateway.rate_limit.resp_client import BackingOff, RedisAddress, RespClient

PREFIX = "palisade:ratelimit:"
Factory = Callable[[ManualClock], RateLimiter]


def key(name: str, rpm: int, burst: int | None = None) -> Subject:
    return Subject("key", f"key:{name}", Limit(rpm, rpm if burst is None else burst))


def user(name: str, rpm: int, burst: int | None = None) -> Subject:
    return Subject("user", f"user:{name}", Limit(rpm, rpm if burst is None else burst))


def client(url: str) -> RespClient:
    return RespClient.from_url(url, connect_timeout=2, reply_timeout=2)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """redis-py, to look at what the limiter stored."""
    connection = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
async def resp(redis_url: str) -> AsyncIterator[RespClient]:
    connection = client(redis_url)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture(params=["local", "redis"])
async def limiter_factory(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """The contract scenarios below run against both limiters."""
    if request.param == "local":
        yield lambda clock: LocalRateLimiter(clock=clock)
        return
    request.applymarker(pytest.mark.redis)
    redis = client(str(request.getfixturevalue("redis_url")))
    try:
        yield lambda clock: RedisRateLimiter(redis, clock=clock)
    finally:
        await redis.aclose()


async def admitted(limiter: RateLimiter, subjects: list[Subject], times: int) -> int:
    results = await asyncio.gather(*(limiter.check(subjects) for _ in range(times)))
    return sum(d.allowed for d in results)


# --- the contract, on both limiters ---------------------------------------------------------


async def test_a_limit_of_n_admits_exactly_n_of_200_parallel_checks(
    limiter_factory: Factory,
) -> None:
    limiter = limiter_factory(ManualClock())
    assert await admitted(limiter, [key("a", 100, 37), user("u", 1000)], 200) == 37


async def test_two_keys_of_one_user_share_the_users_limit(limiter_factory: Factory) -> None:
    limiter = limiter_factory(ManualClock())
    alice, a, b = user("alice", 15), key("a", 10), key("b", 10)
    order = [a, b] * 100
    results = await asyncio.gather(*(limiter.check([k, alice]) for k in order))
    assert sum(d.allowed for d in results) == 15
    # (On Redis the arrival order is the server's: a key can run dry before the user does.)
    assert all(d.retry_after_seconds >= 1 for d in results if not d.allowed)
    # 185 refusals spent nothing of either key: used alone, each key has exactly
    # what the admitted checks left it.
    used_a = sum(d.allowed for d, k in zip(results, order, strict=True) if k == a)
    assert await admitted(limiter, [a], 20) == 10 - used_a
    assert await admitted(limiter, [b], 20) == 10 - (15 - used_a)


async def test_when_the_user_refuses_the_keys_remaining_is_unchanged(
    limiter_factory: Factory,
) -> None:
    limiter = limiter_factory(ManualClock())
    k, u = key("a", 10), user("alice", 60, 1)
    assert (await limiter.check([k, u])).allowed
    assert await admitted(limiter, [k, u], 50) == 0
    alone = await limiter.check([k])
    assert alone.remaining == 8  # 10 - the first check - this one


async def test_refill_after_one_interval_and_an_exact_retry_after(limiter_factory: Factory) -> None:
    clock = ManualClock()
    limiter = limiter_factory(clock)
    k = key("a", 6, 2)  # one every 10 s, two at once
    assert await admitted(limiter, [k], 5) == 2
    refused = await limiter.check([k])
    assert (refused.allowed, refused.retry_after_seconds, refused.reset_seconds) == (False, 10, 20)
    clock.advance(9.999999)
    assert (await limiter.check([k])).retry_after_seconds == 1
    clock.advance(0.000001)
    assert (await limiter.check([k])).allowed
    assert not (await limiter.check([k])).allowed


# --- Redis only -----------------------------------------------------------------------------


@pytest.mark.redis
async def test_two_gateways_on_separate_connections_enforce_one_limit(redis_url: str) -> None:
    first, second = client(redis_url), client(redis_url)
    try:
        clock = ManualClock()
        gateways = [RedisRateLimiter(first, clock=clock), RedisRateLimiter(second, clock=clock)]
        k, u = key("shared", 600, 50), user("owner", 600, 80)
        results = await asyncio.gather(
            *(gateways[i % 2].check([k, u]) for i in range(200)),
        )
        assert sum(d.allowed for d in results) == 50
        clock.advance(1)  # 600 rpm: ten more, whichever gateway asks
        more = await asyncio.gather(*(gateways[i % 2].check([k, u]) for i in range(40)))
        assert sum(d.allowed for d in more) == 10
    finally:
        await first.aclose()
        await second.aclose()


@pytest.mark.redis
async def test_redis_and_local_decide_identically_for_the_same_clock(resp: RespClient) -> None:
    clock = ManualClock()
    local = LocalRateLimiter(clock=clock)
    remote = RedisRateLimiter(resp, clock=clock)
    users = [user("u1", 13, 5), user("u2", 600, 1)]
    keys = [
        (key("k1", 7, 3), users[0]),
        (key("k2", 100, 10), users[0]),
        (key("k3", 1, 2), users[1]),
    ]
    rng = random.Random(20260101)
    seen = {True: 0, False: 0}
    for _ in range(600):
        k, u = rng.choice(keys)
        subjects = rng.choice([[k, u], [k, u], [u, k], [k], [u]])
        step = rng.choice([0.0, 0.0, 0.1, 1.0, 8.571429, rng.uniform(0, 20), rng.random() / 1000])
        clock.advance(round(step, 6))
        expected = await local.check(subjects)
        assert await remote.check(subjects) == expected
        seen[expected.allowed] += 1
    assert min(seen.values()) > 100  # both branches well exercised


class CountingProxy:
    """A TCP relay on 127.0.0.1 between the limiter and the real Redis that records the name of
    every command the limiter sends."""

    def __init__(self, target: str) -> None:
        address = RedisAddress.from_url(target)
        self._target = (address.host, address.port)
        self._db = address.db
        self.sent: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/{self._db}"

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._tasks.append(asyncio.ensure_future(self._pipe(upstream_reader, writer)))
        try:
            while header := await reader.readline():
                parts = []
                for _ in range(int(header[1:])):
                    length_line = await reader.readline()
                    data = await reader.readexactly(int(length_line[1:]) + 2)
                    parts.append(length_line + data)
                self.sent.append(parts[0].split(b"\r\n")[1].decode().upper())
                upstream_writer.write(header + b"".join(parts))
        finally:
            upstream_writer.close()
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)


@pytest.mark.redis
async def test_one_evalsha_per_check_and_nothing_else(redis_url: str) -> None:
    proxy = CountingProxy(redis_url)
    async with proxy as url:
        resp = client(url)
        try:
            limiter = RedisRateLimiter(resp, clock=ManualClock())
            k, u = key("a", 1000), user("b", 1000)
            await limiter.check([k, u])  # connects, and loads the script if Redis lacks it
            assert len([c for c in proxy.sent if c in ("EVALSHA", "SCRIPT", "EVAL")]) <= 3
            proxy.sent.clear()
            writes_before = resp.writes
            for _ in range(25):
                await limiter.check([k, u])
            await limiter.check([k])
            await asyncio.gather(*(limiter.check([u]) for _ in range(10)))
            assert proxy.sent == ["EVALSHA"] * 36
            # One round trip per check at most: the ten issued together share one write.
            assert resp.writes - writes_before == 27
        finally:
            await resp.aclose()


@pytest.mark.redis
async def test_state_is_one_expiring_key_per_subject_untouched_by_a_refusal(
    redis: Redis, resp: RespClient
) -> None:
    limiter = RedisRateLimiter(resp, clock=ManualClock())
    k, u = key("a", 60, 10), user("b", 6, 1)  # T = 1 s and 10 s
    assert (await limiter.check([k, u])).allowed
    assert sorted(await redis.keys("*")) == [f"{PREFIX}key:a".encode(), f"{PREFIX}user:b".encode()]
    assert 0 < await redis.pttl(f"{PREFIX}key:a") <= 1_000 + 1 + EXPIRY_SLACK_MS
    assert 9_000 + EXPIRY_SLACK_MS < await redis.pttl(f"{PREFIX}user:b") <= 10_001 + EXPIRY_SLACK_MS
    before = await redis.mget(f"{PREFIX}key:a", f"{PREFIX}user:b")
    assert not (await limiter.check([k, u])).allowed
    assert await redis.mget(f"{PREFIX}key:a", f"{PREFIX}user:b") == before


@pytest.mark.redis
async def test_a_redis_decision_puts_no_id_in_any_header(resp: RespClient) -> None:
    limiter = RedisRateLimiter(resp, clock=ManualClock())
    k, u = key("kid_SECRET_1", 100, 2), user("uid_SECRET_2", 600)
    for _ in range(3):
        text = repr(rate_limit_headers(await limiter.check([k, u])))
        assert "SECRET" not in text
        assert "key:" not in text
        assert "user:" not in text


# --- Redis that cannot answer ---------------------------------------------------------------


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FakeRedis:
    """A TCP server on 127.0.0.1 speaking just enough RESP: OK to the connection handshake, and
    to anything else either an error line or (reply=None) silence."""

    def __init__(self, reply: bytes | None) -> None:
        self._reply = reply
        self._writers: list[asyncio.StreamWriter] = []
        self.commands: list[bytes] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                header = await reader.readline()
                if not header:
                    return
                parts = []
                for _ in range(int(header[1:])):
                    length = int((await reader.readline())[1:])
                    parts.append((await reader.readexactly(length + 2))[:-2])
                self.commands.append(parts[0].upper())
                if parts[0].upper() in (b"CLIENT", b"HELLO", b"SELECT"):
                    writer.write(b"+OK\r\n")
                elif self._reply is not None:
                    writer.write(self._reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return


async def assert_unavailable_quickly(limiter: RedisRateLimiter, within: float) -> None:
    started = time.monotonic()
    with pytest.raises(RateLimiterUnavailable) as refused:
        await limiter.check([key("a", 10), user("b", 10)])
    assert time.monotonic() - started < within
    assert "key:" not in str(refused.value)
    assert "user:" not in str(refused.value)


async def test_a_closed_port_is_unavailable_quickly() -> None:
    resp = RespClient(RedisAddress(port=closed_port()), connect_timeout=0.25, reply_timeout=0.25)
    try:
        await assert_unavailable_quickly(RedisRateLimiter(resp, clock=ManualClock()), 1.0)
    finally:
        await resp.aclose()


async def test_a_handshake_that_never_completes_is_bounded_by_the_connect_timeout() -> None:
    # The server accepts but never answers AUTH: connecting (handshake included) gives up.
    fake = FakeRedis(reply=None)
    async with fake as url:
        resp = RespClient.from_url(
            url.replace("redis://", "redis://:hunter2@"), connect_timeout=0.2, reply_timeout=5
        )
        try:
            await assert_unavailable_quickly(RedisRateLimiter(resp, clock=ManualClock()), 1.0)
        finally:
            await resp.aclose()
    assert fake.commands == [b"AUTH"]


async def test_a_redis_that_never_answers_is_unavailable_at_the_deadline() -> None:
    async with FakeRedis(reply=None) as url:
        resp = RespClient.from_url(url, connect_timeout=1, reply_timeout=0.2)
        try:
            limiter = RedisRateLimiter(resp, clock=ManualClock())
            await assert_unavailable_quickly(limiter, 1.0)
            # The silent connection was dropped: the next check tries a fresh one.
            await assert_unavailable_quickly(limiter, 1.0)
        finally:
            await resp.aclose()


async def test_a_read_only_replica_is_unavailable() -> None:
    readonly = b"-READONLY You can't write against a read only replica.\r\n"
    fake = FakeRedis(reply=readonly)
    async with fake as url:
        resp = RespClient.from_url(url, connect_timeout=0.5, reply_timeout=0.5)
        try:
            await assert_unavailable_quickly(RedisRateLimiter(resp, clock=ManualClock()), 1.0)
        finally:
            await resp.aclose()
    assert b"EVALSHA" in fake.commands


async def test_a_flushed_script_is_loaded_again_and_the_checks_still_count(
    redis: Redis, resp: RespClient
) -> None:
    # A restarted (or flushed) Redis forgets scripts: the calls that met NOSCRIPT are sent
    # again after one SCRIPT LOAD, within the same check, and each is counted exactly once.
    limiter = RedisRateLimiter(resp, clock=ManualClock())
    subject = key("flush", 3)
    assert (await limiter.check([subject])).allowed
    await redis.script_flush()
    results = await asyncio.gather(*(limiter.check([subject]) for _ in range(4)))
    assert [r.allowed for r in results].count(True) == 2


async def test_a_lost_connection_fails_its_checks_and_the_next_check_reconnects(
    redis: Redis, resp: RespClient, redis_url: str
) -> None:
    limiter = RedisRateLimiter(resp, clock=ManualClock())
    subject = key("reconnect", 100)
    assert (await limiter.check([subject])).allowed
    # Redis drops the limiter's connection (a restart, a failover, a proxy timeout).
    db = RedisAddress.from_url(redis_url).db
    ours = [c for c in await redis.client_list() if c["db"] == str(db) and c["cmd"] == "evalsha"]
    assert len(ours) == 1
    await redis.client_kill_filter(_id=ours[0]["id"])
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append((await limiter.check([subject])).allowed)
        except RateLimiterUnavailable:
            outcomes.append(None)
    # At most the first check after the kill can meet the dead socket; then it works again.
    assert outcomes[1:] == [True, True]


@pytest.mark.redis
async def test_a_real_redis_refusing_the_password_is_backed_off_and_never_quoted(
    redis_url: str,
) -> None:
    # No such user on the test Redis: AUTH is refused (WRONGPASS). The refusal reaches the
    # caller as RateLimiterUnavailable naming no password; the next checks fail at once
    # (backoff) without another connection attempt, until the backoff has passed.
    password = "s3cret-Hunter2"
    address = RedisAddress.from_url(redis_url)
    url = f"redis://palisade-nobody:{password}@{address.host}:{address.port}/{address.db}"
    now = [0.0]
    resp = RespClient.from_url(url, connect_timeout=2, reply_timeout=2, monotonic=lambda: now[0])
    limiter = RedisRateLimiter(resp, clock=ManualClock())
    try:
        for _ in range(3):
            with pytest.raises(RateLimiterUnavailable) as refused:
                await limiter.check([key("a", 10)])
            chain: list[BaseException] = []
            error: BaseException | None = refused.value
            while error is not None:
                chain.append(error)
                error = error.__cause__ or error.__context__
            assert all(password not in f"{e!s}{e!r}" for e in chain)
            assert password not in repr(resp._address)
        assert isinstance(chain[-1], BackingOff)  # the third: no attempt made
        now[0] += 2.0
        with pytest.raises(RateLimiterUnavailable) as again:
            await limiter.check([key("a", 10)])
        assert not isinstance(again.value.__cause__, BackingOff)  # a real attempt again
    finally:
        await resp.aclose()
