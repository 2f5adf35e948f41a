"""A Postgres restart and a Postgres outage, as auth's callers see them (issue 10 review).

After the server drops every connection (a restart, a proxy's idle timeout), requests succeed:
transactions ping a pooled connection before using it, hot reads retry once on a fresh one.
While the database refuses connections, requests answer UNAVAILABLE with the stable code
`unavailable` (the gateway's 503), never INTERNAL (500) with a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import psycopg
import pytest
from sqlalchemy.engine import make_url

from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def _admin(auth) -> tuple[str, str]:
    url = make_url(auth.auth_db_url)
    admin = url.set(drivername="postgresql", database="postgres")
    return admin.render_as_string(hide_password=False), str(url.database)


def _drop_connections(auth) -> int:
    admin, database = _admin(auth)
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


@contextmanager
def _database_refusing_connections(auth) -> Iterator[None]:
    admin, database = _admin(auth)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
    _drop_connections(auth)
    try:
        yield
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')


async def _signed_in(auth, email: str):
    await auth.sign_up(email)
    tokens = await auth.login(email)
    return tokens, await auth.validate(tokens.access_token)


async def test_after_the_server_drops_every_connection_requests_succeed(auth) -> None:
    tokens, grant = await _signed_in(auth, "restart@example.com")
    # Several pooled connections on both pools, then all of them dropped at once.
    await asyncio.gather(
        *(auth.stub.GetMe(pb.GetMeRequest(), metadata=auth.as_user(grant)) for _ in range(6))
    )
    assert _drop_connections(auth) > 0
    me = await auth.stub.GetMe(pb.GetMeRequest(), metadata=auth.as_user(grant))
    assert me.email == "restart@example.com"
    listed = await auth.stub.ListSessions(pb.ListSessionsRequest(), metadata=auth.as_user(grant))
    assert len(listed.sessions) == 1
    assert (await auth.validate(tokens.access_token)).user_id == grant.user_id
    assert (await auth.refresh(tokens.refresh_token)).refresh_token

    # Many at once after a drop: each read retries on its own fresh connection.
    _drop_connections(auth)
    answers = await asyncio.gather(
        *(auth.stub.GetMe(pb.GetMeRequest(), metadata=auth.as_user(grant)) for _ in range(16))
    )
    assert {a.email for a in answers} == {"restart@example.com"}


async def test_a_database_outage_answers_unavailable_not_internal(auth) -> None:
    tokens, grant = await _signed_in(auth, "outage@example.com")
    calls = {
        "GetMe": lambda: auth.stub.GetMe(pb.GetMeRequest(), metadata=auth.as_user(grant)),
        "ListSessions": lambda: auth.stub.ListSessions(
            pb.ListSessionsRequest(), metadata=auth.as_user(grant)
        ),
        "ValidateAccessToken": lambda: auth.validate(tokens.access_token),
        "Refresh": lambda: auth.refresh(tokens.refresh_token),
        "Login": lambda: auth.login("outage@example.com"),
    }
    with _database_refusing_connections(auth):
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            error = caught.value
            code = dict(error.trailing_metadata() or ()).get("palisade-error-code")
            assert (name, error.code(), code) == (name, grpc.StatusCode.UNAVAILABLE, "unavailable")
    # And back: the same calls work again once the database accepts connections.
    me = await auth.stub.GetMe(pb.GetMeRequest(), metadata=auth.as_user(grant))
    assert me.email == "outage@example.com"
