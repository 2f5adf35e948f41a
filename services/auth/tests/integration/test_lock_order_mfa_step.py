"""The MFA step of a login keeps auth's lock order on real Postgres (issue 12): the user row
before the challenge and the code.

A password change in flight holds the user row (its UPDATE comes first) and goes on to retire
the user's pending second steps. An MFA step submitted meanwhile must wait for the user row
before it touches its challenge or the TOTP row: otherwise it holds the challenge the change is
about to retire while it waits for the row the change holds, a deadlock. Deterministic: the
test holds the change's transaction open, sees (pg_blocking_pids) that the step waits for it,
and checks with NOWAIT probes that the step holds neither row yet. SQLite runs one writer at a
time and is covered by the MFA tests that run on both backends.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
import pyotp
import pytest
from auth_email_links import error_code

from palisade.auth.mfa.store import MfaRecords
from palisade.auth.passwords.hashing import UNUSABLE_PASSWORD_HASH
from palisade.auth.sessions.tokens import TokenKind, check_token
from palisade.auth.store import AuthStore
from palisade.common.db import create_engine
from palisade_api.auth.v1 import auth_pb2 as pb

from .lock_order_support import (
    backend_pid,
    row_is_free,
    start,
    user_row_held,
    wait_until_blocked_by,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
EMAIL = "step@example.com"


async def _pending_step(auth) -> tuple[str, pb.TokenResponse, pyotp.TOTP]:
    """A user with TOTP, and a login that passed the password: (user id, pending, totp)."""
    signed_up = await auth.sign_up(EMAIL)
    grant = await auth.validate((await auth.login(EMAIL)).access_token)
    enrolment = await auth.stub.StartTotpEnrollment(
        pb.StartTotpEnrollmentRequest(), metadata=auth.as_user(grant)
    )
    totp = pyotp.TOTP(enrolment.secret)
    await auth.stub.ConfirmTotp(
        pb.ConfirmTotpRequest(code=totp.at(auth.clock.now())), metadata=auth.as_user(grant)
    )
    auth.clock.advance(timedelta(seconds=31))  # a fresh step: its code is unused
    pending = await auth.login(EMAIL)
    assert pending.mfa_required
    return signed_up.user_id, pending, totp


def _sessions_of(auth, user_id: str) -> int:
    with auth.db() as conn:
        row = conn.execute(
            "SELECT count(*) FROM sessions WHERE user_id = %s", (user_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_the_step_waits_for_the_user_row_before_it_takes_its_challenge(auth) -> None:
    user_id, pending, totp = await _pending_step(auth)
    challenge = check_token(pending.mfa_token, TokenKind.MFA)
    sessions_before = _sessions_of(auth, user_id)
    engine = create_engine(auth.auth_db_url)
    try:
        async with AuthStore(engine=engine).transaction() as change:
            blocker = await backend_pid(change.conn)
            # What ChangePassword does first: the new hash, which locks the user row.
            user = await change.user(user_id)
            assert user is not None
            now = auth.clock.now()
            assert await change.replace_password_hash(
                user_id, user.password_hash, UNUSABLE_PASSWORD_HASH, now, changed=True
            )
            step = start(
                auth.stub.LoginMfa(
                    pb.LoginMfaRequest(mfa_token=pending.mfa_token, code=totp.at(now)),
                    metadata=auth.anonymous(),
                )
            )
            await wait_until_blocked_by(auth.auth_db_url, blocker, step)
            # Waiting for the user row, and holding nothing the change will want next.
            assert await row_is_free(
                auth.auth_db_url,
                "SELECT 1 FROM mfa_challenges WHERE token_hash = %s FOR UPDATE NOWAIT",
                [challenge],
            ), "the step took its challenge before the user row"
            assert await row_is_free(
                auth.auth_db_url,
                "SELECT 1 FROM totp_credentials WHERE user_id = %s FOR UPDATE NOWAIT",
                [user_id],
            ), "the step used its code before the user row"
            # The change goes on: the pending second steps of the old password end. Had the step
            # held its challenge, this would wait for it while it waits for us: a deadlock.
            await MfaRecords(change).retire_mfa_challenges(user_id, now)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await step
    finally:
        await engine.dispose()
    # The step then found its challenge retired: refused, and no session made.
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_code(refused.value) == "invalid_mfa_token"
    assert _sessions_of(auth, user_id) == sessions_before


async def test_a_step_that_waited_signs_in_once_the_row_is_free(auth) -> None:
    """The same wait for a transaction that holds the user row exclusively (as whatever ends
    sessions does) and then ends without touching the step's challenge: the step carries on
    and signs in, with its code."""
    user_id, pending, totp = await _pending_step(auth)
    async with user_row_held(auth.auth_db_url, user_id, exclusive=True) as blocker:
        step = start(
            auth.stub.LoginMfa(
                pb.LoginMfaRequest(mfa_token=pending.mfa_token, code=totp.at(auth.clock.now())),
                metadata=auth.anonymous(),
            )
        )
        await wait_until_blocked_by(auth.auth_db_url, blocker, step)
    signed_in = await step
    grant = await auth.validate(signed_in.access_token)
    assert grant.user_id == user_id
