"""A password change racing logins with the old password (issue 9 item 1), on both backends.

Whatever the interleaving, no session made with the old password outlives the change, and a
login's re-hash can never put the old password back.
"""

from __future__ import annotations

import asyncio
import sqlite3

import bcrypt
import grpc
import pytest

from palisade_api.auth.v1 import auth_pb2 as pb

OLD = "correct horse battery staple"
NEW = "a brand new passphrase"
LOGINS = 8


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


def _legacy_hash_for(auth, sqlite_path: str | None, user_id: str) -> None:
    """Gives the user a legacy bcrypt hash, so every login that checks it also re-hashes."""
    legacy = bcrypt.hashpw(OLD.encode(), bcrypt.gensalt(rounds=4)).decode()
    if sqlite_path is None:
        with auth.db() as conn:
            conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (legacy, user_id))
        return
    with sqlite3.connect(sqlite_path, timeout=10) as conn:
        conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (legacy, user_id))


@pytest.fixture(params=["sqlite", "postgres"])
def postgres_url(request, postgres_database_factory, tmp_path) -> str:
    """Overrides the auth database that auth_factory uses: once per backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'auth-race.db'}"
    return postgres_database_factory()


def _sqlite_path(url: str) -> str | None:
    prefix = "sqlite+aiosqlite:///"
    return url[len(prefix) :] if url.startswith(prefix) else None


async def test_logins_racing_a_password_change_leave_no_old_password_session(
    auth_factory, postgres_url
) -> None:
    sqlite_path = _sqlite_path(postgres_url)
    async with auth_factory() as auth:
        for round_ in range(3):
            email = f"race{round_}@example.com"
            await auth.sign_up(email, OLD)
            here = await auth.login(email, OLD)
            me = await auth.validate(here.access_token)
            # From a thread: on this loop, the auth server's own transactions (its relays and
            # forwarder write in the background) could never finish while a blocking write
            # waited for their lock, and SQLite then answers "database is locked".
            await asyncio.to_thread(_legacy_hash_for, auth, sqlite_path, me.user_id)

            change = auth.stub.ChangePassword(
                pb.ChangePasswordRequest(current_password=OLD, new_password=NEW),
                metadata=auth.as_user(me),
            )
            logins = [auth.login(email, OLD, ip=f"198.51.100.{i + 1}") for i in range(LOGINS)]
            changed, *results = await asyncio.gather(change, *logins, return_exceptions=True)

            assert not isinstance(changed, BaseException), changed
            for result in results:
                if isinstance(result, grpc.aio.AioRpcError):
                    assert _code(result) == "invalid_credentials"
                    continue
                assert not isinstance(result, BaseException), result
                # It won the race: the change must have ended it.
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await auth.validate(result.access_token)
                assert _code(caught.value) == "session_revoked"
            await auth.validate(here.access_token)  # the changer's own session stays
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await auth.login(email, OLD, ip="198.51.100.200")
            assert _code(caught.value) == "invalid_credentials"  # not put back by a re-hash
            await auth.login(email, NEW, ip="198.51.100.201")
