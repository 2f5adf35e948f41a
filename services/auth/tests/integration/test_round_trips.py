"""Round trips per request, pinned (issue 10): database statements, transactions and crypto
calls that one GetMe, ListSessions or Refresh costs, on Postgres.

These are the busiest authenticated routes; every product service copies their patterns. An
extra query, an extra BEGIN/COMMIT or an extra gRPC hop fails here, as a count, long before it
shows up as a slower benchmark. The spies count only work done inside an auth RPC of the given
method (the verified caller is in the request's context), not background jobs (mail relay,
revocation relay) that happen to run meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from redis.asyncio.connection import AbstractConnection as RedisConnection
from sqlalchemy import event
from sqlalchemy.engine import Connection

from palisade.common.caller import current_caller
from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

AUTH = "/palisade.auth.v1.AuthService/"


def _method() -> str | None:
    caller = current_caller.get()
    return None if caller is None else caller.method.removeprefix(AUTH)


@dataclass
class RoundTrips:
    statements: Counter[str] = field(default_factory=Counter)
    # BEGIN ... COMMIT/ROLLBACK pairs actually sent (autocommit reads send none).
    transactions: Counter[str] = field(default_factory=Counter)
    crypto_calls: Counter[str] = field(default_factory=Counter)
    # Commands or pipelines sent to Redis (each one network round trip).
    redis_trips: Counter[str] = field(default_factory=Counter)

    def of(self, method: str) -> tuple[int, int, dict[str, int]]:
        calls = {
            k.split(":", 1)[1]: v for k, v in self.crypto_calls.items() if k.startswith(method)
        }
        return self.statements[method], self.transactions[method], calls

    def clear(self) -> None:
        self.statements.clear()
        self.transactions.clear()
        self.crypto_calls.clear()
        self.redis_trips.clear()


class _CountingStub:
    """Stands in for the crypto client's stub: counts each call by the auth RPC it serves."""

    def __init__(self, stub: object, trips: RoundTrips) -> None:
        self._stub = stub
        self._trips = trips

    def __getattr__(self, name: str) -> object:
        target = getattr(self._stub, name)

        def call(*args: object, **kwargs: object) -> object:
            method = _method()
            if method is not None:
                self._trips.crypto_calls[f"{method}:{name}"] += 1
            return target(*args, **kwargs)

        return call


@pytest.fixture
def trips(auth, monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    counted = RoundTrips()
    server = auth.servers[0]
    engines = [server.engine.sync_engine]
    reads = server.reads
    assert reads._pool is not None  # Postgres: direct reads on the driver's own pool
    original_fetch = reads._fetch

    async def counted_fetch(sql, params, first_only):
        method = _method()
        if method is not None:
            counted.statements[method] += 1  # one statement, in autocommit: no transaction
        return await original_fetch(sql, params, first_only)

    reads._fetch = counted_fetch
    original_send = RedisConnection.send_packed_command

    async def counted_send(self: RedisConnection, *args: object, **kwargs: object) -> None:
        method = _method()
        if method is not None:
            counted.redis_trips[method] += 1  # one command, or one whole pipeline
        await original_send(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RedisConnection, "send_packed_command", counted_send)

    def on_statement(conn: Connection, *_: object) -> None:
        method = _method()
        if method is not None:
            counted.statements[method] += 1

    def on_begin(conn: Connection) -> None:
        method = _method()
        # The driver's own state: in autocommit psycopg sends no BEGIN (nor COMMIT).
        if method is not None and not conn.connection.driver_connection.autocommit:
            counted.transactions[method] += 1

    for engine in engines:
        event.listen(engine, "before_cursor_execute", on_statement)
        event.listen(engine, "begin", on_begin)
    crypto = auth.servers[0].sessions._crypto
    original_stub = crypto._stub
    crypto._stub = _CountingStub(original_stub, counted)
    try:
        yield counted
    finally:
        crypto._stub = original_stub
        reads._fetch = original_fetch
        for engine in engines:
            event.remove(engine, "before_cursor_execute", on_statement)
            event.remove(engine, "begin", on_begin)


async def test_spies_see_the_work_of_a_request(auth, trips) -> None:
    """The counters are live: a sign-up writes in a transaction and calls crypto."""
    await auth.sign_up("spy@example.com")
    statements, transactions, calls = trips.of("SignUp")
    assert statements > 0, trips
    assert transactions > 0, trips
    assert calls, trips


async def test_get_me_is_one_statement_and_one_decrypt(auth, trips) -> None:
    await auth.sign_up("me@example.com")
    grant = await auth.validate((await auth.login("me@example.com")).access_token)
    trips.clear()
    me = await auth.stub.GetMe(pb.GetMeRequest(), metadata=auth.as_user(grant))
    assert me.email == "me@example.com"
    assert trips.of("GetMe") == (1, 0, {"Decrypt": 1})


async def test_list_sessions_is_one_statement_and_no_crypto(auth, trips) -> None:
    await auth.sign_up("list@example.com")
    await auth.login("list@example.com")
    grant = await auth.validate((await auth.login("list@example.com")).access_token)
    trips.clear()
    listed = await auth.stub.ListSessions(pb.ListSessionsRequest(), metadata=auth.as_user(grant))
    assert len(listed.sessions) == 2
    assert trips.of("ListSessions") == (1, 0, {})


async def test_refresh_is_one_read_one_transaction_and_one_encrypt(auth, trips) -> None:
    await auth.sign_up("refresh@example.com")
    tokens = await auth.login("refresh@example.com")
    trips.clear()
    rotated = await auth.refresh(tokens.refresh_token)
    assert rotated.refresh_token != tokens.refresh_token
    # The unlocked read that decides whether to encrypt, then the locking transaction:
    # lock the token, insert the access token, mark the old one rotated, insert its
    # successor, touch the session, emit the security event.
    assert trips.of("Refresh") == (7, 1, {"Encrypt": 1})


async def test_validate_access_token_is_one_statement_in_one_transaction(auth, trips) -> None:
    """The gateway's cache miss: the grant (authenticated_at included) comes from one SELECT;
    last_seen_at is written at most once a minute, not on this validation."""
    await auth.sign_up("validate@example.com")
    tokens = await auth.login("validate@example.com")
    trips.clear()
    grant = await auth.validate(tokens.access_token)
    assert grant.HasField("authenticated_at")
    assert trips.of("ValidateAccessToken") == (1, 1, {})


async def test_list_team_members_is_two_statements_and_one_decrypt(auth, trips) -> None:
    """The membership check, the page, and one Decrypt call for every name and email on it."""
    owner = await auth.sign_up("team-owner@example.com")
    others = [await auth.sign_up(f"team-{i}@example.com") for i in range(4)]
    with auth.db() as conn:
        for other in others:
            conn.execute(
                "INSERT INTO memberships (workspace_id, user_id, role, created_at)"
                " VALUES (%s, %s, 'member', now())",
                (owner.workspace_id, other.user_id),
            )
    grant = await auth.validate((await auth.login("team-owner@example.com")).access_token)
    trips.clear()
    listed = await auth.stub.ListTeamMembers(
        pb.ListTeamMembersRequest(), metadata=auth.as_user(grant)
    )
    assert len(listed.members) == 5
    assert trips.of("ListTeamMembers") == (2, 0, {"Decrypt": 1})


async def test_transactions_never_get_an_autocommit_connection(auth) -> None:
    """Direct reads run in autocommit on the driver's own pool: the pool that serves
    transactions (whose SELECT ... FOR UPDATE locks depend on being in one) never hands out
    such a connection."""
    server = auth.servers[0]
    assert server.reads._pool is not None
    for _ in range(3):
        async with server.reads._pool.connection() as (conn, _):
            assert conn.autocommit
    for _ in range(3):
        async with server.sessions._store.transaction() as tx:
            assert not tx.conn.sync_connection.connection.driver_connection.autocommit


async def test_concurrent_get_me_share_decrypt_calls_and_each_sees_only_itself(auth) -> None:
    """Concurrent GetMe calls' Decrypts travel together (palisade.common.decrypt_batches):
    fewer RPCs than requests, and never anyone else's email or name in an answer."""
    people = [f"batch-{i}@example.com" for i in range(12)]
    grants = []
    for email in people:
        await auth.sign_up(email)
        grants.append(await auth.validate((await auth.login(email)).access_token))
    batches = auth.servers[0].sessions._crypto.decrypt_batches
    assert batches is not None  # auth's client shares Decrypt calls
    sent_before = batches.batches_sent
    for _ in range(3):
        answers = await asyncio.gather(
            *(auth.stub.GetMe(pb.GetMeRequest(), metadata=auth.as_user(g)) for g in grants)
        )
        assert [(a.email, a.user_id) for a in answers] == [
            (email, g.user_id) for email, g in zip(people, grants, strict=True)
        ]
    assert batches.batches_sent - sent_before < 3 * len(people)


async def test_login_is_one_read_one_transaction_one_blind_index_and_two_redis_calls(
    auth, trips
) -> None:
    """A password login (no second factor, a known network) outside its hash: the user by
    blind index as a direct read (no lock: the hash is checked again, locked); then one
    transaction: lock the user row with the verified hash (reading its disabled state), the
    second-factor and first-workspace look, the session, its access and refresh tokens, the
    event and the known network. Redis: the throttle's look-and-count before the hash, and its
    reset after it."""
    await auth.sign_up("login@example.com")
    await auth.login("login@example.com")  # Redis scripts loaded, the network known
    trips.clear()
    tokens = await auth.login("login@example.com")
    assert tokens.access_token
    assert trips.of("Login") == (8, 1, {"BlindIndex": 1})
    assert trips.redis_trips["Login"] == 2
