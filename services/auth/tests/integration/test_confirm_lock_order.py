"""The three emailed-link confirm paths that change an account keep auth's lock order on real
Postgres: the owner's user row before the token.

A password reset's confirm, an email change's confirm and an email verification's confirm each
write the user row (a new hash, a new address, a first proof). A path that holds the user row
first and then touches the user's tokens (a password change retiring the links sent before it,
another confirm of a sibling link) must not meet a confirm that has used up, or locked, its token
and is now waiting for that row: a deadlock. So each confirm reads its token's owner without a
lock, locks the user row (FOR NO KEY UPDATE), and only then uses the token up with the core's
single-use compare-and-set.

Deterministic, in the style of the other lock-order tests (lock_order_support.py): the test
holds the "change" transaction open (it updated the user row), starts the confirm, sees through
pg_blocking_pids that the confirm waits for it, and checks with NOWAIT probes that the confirm
holds none of the user's tokens; then the change retires those tokens (the statement that would
close the cycle) and commits, and the confirm finds its token retired. Before the fix each of
the three probes failed (the confirm held its token while it waited for the user row).

Each token is also raced by parallel confirms on SQLite and Postgres: exactly one wins.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from auth_email_links import Mailed, error_code, mailed_auth, text_of, token_in
from smtp_catcher import SmtpCatcher, serve_smtp_catcher

from palisade.auth.accounts.address_proof import retire_email_changes
from palisade.auth.links.password_reset import reset_tokens
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import ACCOUNT_TOKENS, EMAIL_VERIFICATION
from palisade.auth.passwords.hashing import UNUSABLE_PASSWORD_HASH
from palisade.auth.sessions.tokens import token_hash
from palisade.auth.store import AuthStore, AuthTransaction
from palisade.common.db import create_engine
from palisade_api.auth.v1 import account_pb2, password_reset_pb2_grpc
from palisade_api.auth.v1 import password_reset_pb2 as rpb

from .lock_order_support import (
    backend_pid,
    row_is_free,
    start,
    user_row_held,
    wait_until_blocked_by,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

EMAIL = "confirm@example.com"
NEW_EMAIL = "moved@example.com"
NEW_PASSWORD = "a freshly chosen passphrase"
RACERS = 12
VERIFY_SUBJECT = "Verify your Palisade email address"
CHANGE_SUBJECT = "Confirm your new Palisade email address"
RESET_SUBJECT = "Reset your Palisade password"
_RESET_LINK = re.compile(r"https?://\S+/auth/reset-password\?token=[A-Za-z0-9_%-]+")
_TOKENS_OF_USER = "SELECT 1 FROM account_tokens WHERE user_id = %s FOR UPDATE NOWAIT"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[SmtpCatcher, int]]:
    async with serve_smtp_catcher() as served:
        yield served


@pytest.fixture
async def on_postgres(auth_factory, smtp, postgres_url) -> AsyncIterator[Mailed]:
    async for harness in mailed_auth(auth_factory, smtp, postgres_url):
        yield harness


@pytest.fixture
async def on_both(auth_factory, smtp, database_url) -> AsyncIterator[Mailed]:
    async for harness in mailed_auth(auth_factory, smtp, database_url):
        yield harness


# -- the three links, as a person gets them ---------------------------------------------------


async def _unverified(mailed: Mailed) -> tuple[str, str]:
    """A new account and its sign-up's verification link: (user id, token)."""
    user_id = (await mailed.sign_up(EMAIL)).user_id
    return user_id, await mailed.verification_token(EMAIL)


async def _change_link(mailed: Mailed) -> tuple[str, str]:
    """A verified, signed-in account that asked to move to NEW_EMAIL: (user id, token)."""
    user_id, verification = await _unverified(mailed)
    await mailed.confirm(verification)
    tokens = await mailed.auth.login(EMAIL)
    grant = await mailed.auth.validate(tokens.access_token)
    await mailed.accounts.RequestEmailChange(
        account_pb2.RequestEmailChangeRequest(new_email=NEW_EMAIL),
        metadata=mailed.auth.as_user(grant),
    )
    [mail] = await mailed.mails_to(NEW_EMAIL, CHANGE_SUBJECT)
    return user_id, token_in(mail)


def _resets(channel: Any) -> password_reset_pb2_grpc.PasswordResetServiceStub:
    return password_reset_pb2_grpc.PasswordResetServiceStub(channel)


async def _reset_link(mailed: Mailed, resets: Any) -> tuple[str, str]:
    """A verified account with an emailed reset link: (user id, token)."""
    user_id = (await mailed.sign_up(EMAIL)).user_id
    await mailed.auth.verify_email(user_id)
    await resets.RequestPasswordReset(
        rpb.RequestPasswordResetRequest(email=EMAIL), metadata=mailed.auth.anonymous()
    )
    [mail] = await mailed.mails_to(EMAIL, RESET_SUBJECT)
    [link] = _RESET_LINK.findall(text_of(mail))
    return user_id, link.rsplit("token=", 1)[1]


def _confirm_reset(mailed: Mailed, resets: Any, token: str) -> Awaitable[Any]:
    return resets.ConfirmPasswordReset(
        rpb.ConfirmPasswordResetRequest(token=token, new_password=NEW_PASSWORD),
        metadata=mailed.auth.anonymous(),
    )


def _confirm_email(mailed: Mailed, token: str) -> Awaitable[Any]:
    return mailed.accounts.ConfirmEmailVerification(
        account_pb2.ConfirmEmailVerificationRequest(token=token),
        metadata=mailed.auth.anonymous(),
    )


# -- the change that holds the user row, then retires the user's links -------------------------

Retire = Callable[[AuthTransaction, str, Mailed], Awaitable[None]]


async def _retire_resets(tx: AuthTransaction, user_id: str, mailed: Mailed) -> None:
    await reset_tokens(mailed.auth.clock).retire(tx, user_id)


async def _retire_verifications(tx: AuthTransaction, user_id: str, mailed: Mailed) -> None:
    core = SingleUseTokens(
        table=ACCOUNT_TOKENS, purpose=EMAIL_VERIFICATION, clock=mailed.auth.clock
    )
    await core.retire(tx, user_id)


async def _retire_changes(tx: AuthTransaction, user_id: str, mailed: Mailed) -> None:
    await retire_email_changes(tx, user_id, mailed.auth.clock.now())


async def _waits_for_the_user_row_holding_no_token(
    mailed: Mailed,
    user_id: str,
    token: str,
    confirm: Callable[[], Awaitable[Any]],
    retire: Retire,
) -> grpc.aio.AioRpcError:
    """Runs `confirm` (made only once the change holds the row: a gRPC call starts when it is
    made) against a password change that holds the user row; returns the refusal
    the confirm gets once the change retired its token and committed."""
    url = mailed.auth.auth_db_url
    engine = create_engine(url)
    try:
        async with AuthStore(engine=engine).transaction() as change:
            blocker = await backend_pid(change.conn)
            # What ChangePassword does first: the new hash, which locks the user row.
            user = await change.user(user_id)
            assert user is not None
            assert await change.replace_password_hash(
                user_id,
                user.password_hash,
                UNUSABLE_PASSWORD_HASH,
                mailed.auth.clock.now(),
                changed=True,
            )
            confirming = start(confirm())
            await wait_until_blocked_by(url, blocker, confirming)
            # Waiting for the user row, and holding none of the user's tokens.
            assert await row_is_free(
                url,
                "SELECT 1 FROM account_tokens WHERE token_hash = %s FOR UPDATE NOWAIT",
                [token_hash(token)],
            ), "the confirm took its token before the user row"
            assert await row_is_free(url, _TOKENS_OF_USER, [user_id]), (
                "the confirm holds one of the user's tokens while it waits for the user row"
            )
            # The change goes on: the links sent before it die. Had the confirm held its
            # token, this would wait for it while it waits for us: a deadlock.
            await retire(change, user_id, mailed)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await confirming
    finally:
        await engine.dispose()
    return refused.value


async def test_a_reset_confirm_waits_for_the_user_row_before_its_token(
    on_postgres: Mailed,
) -> None:
    mailed = on_postgres
    async with mailed.auth.signing.channel(mailed.auth.servers[0].running.target) as channel:
        resets = _resets(channel)
        user_id, token = await _reset_link(mailed, resets)
        refused = await _waits_for_the_user_row_holding_no_token(
            mailed, user_id, token, lambda: _confirm_reset(mailed, resets, token), _retire_resets
        )
    assert error_code(refused) == "invalid_reset_token"
    # The change's hash stands: the reset changed nothing.
    [(stored,)] = mailed.rows("SELECT password_hash FROM users WHERE id = %s", user_id)
    assert stored == UNUSABLE_PASSWORD_HASH


async def test_a_verification_confirm_waits_for_the_user_row_before_its_token(
    on_postgres: Mailed,
) -> None:
    mailed = on_postgres
    user_id, token = await _unverified(mailed)
    refused = await _waits_for_the_user_row_holding_no_token(
        mailed, user_id, token, lambda: _confirm_email(mailed, token), _retire_verifications
    )
    assert error_code(refused) == "invalid_verification_link"
    assert (
        mailed.count(
            "SELECT count(*) FROM users WHERE id = %s AND email_verified_at IS NULL", user_id
        )
        == 1
    )


async def test_an_email_change_confirm_waits_for_the_user_row_before_its_token(
    on_postgres: Mailed,
) -> None:
    mailed = on_postgres
    user_id, token = await _change_link(mailed)
    refused = await _waits_for_the_user_row_holding_no_token(
        mailed, user_id, token, lambda: _confirm_email(mailed, token), _retire_changes
    )
    assert error_code(refused) == "invalid_verification_link"
    with pytest.raises(grpc.aio.AioRpcError):  # the address did not move
        await mailed.auth.login(NEW_EMAIL)


async def test_a_confirm_that_waited_for_a_login_carries_on(on_postgres: Mailed) -> None:
    """A login holds the user row shared; a confirm takes it exclusively (it writes the row),
    so it waits for the login, and then proves the address once the login is done."""
    mailed = on_postgres
    user_id, token = await _unverified(mailed)
    async with user_row_held(mailed.auth.auth_db_url, user_id, exclusive=False) as blocker:
        confirming = start(_confirm_email(mailed, token))
        await wait_until_blocked_by(mailed.auth.auth_db_url, blocker, confirming)
    await confirming
    assert (
        mailed.count(
            "SELECT count(*) FROM users WHERE id = %s AND email_verified_at IS NOT NULL", user_id
        )
        == 1
    )


# -- single use under races, on both backends ------------------------------------------------


async def _one_winner(calls: list[Awaitable[Any]], code: str) -> None:
    results = await asyncio.gather(*calls, return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1, results
    for error in lost:
        assert isinstance(error, grpc.aio.AioRpcError), error
        assert error_code(error) == code, error


async def test_parallel_reset_confirms_have_one_winner(on_both: Mailed) -> None:
    mailed = on_both
    async with mailed.auth.signing.channel(mailed.auth.servers[0].running.target) as channel:
        resets = _resets(channel)
        _, token = await _reset_link(mailed, resets)
        await _one_winner(
            [_confirm_reset(mailed, resets, token) for _ in range(RACERS)], "invalid_reset_token"
        )
    await mailed.auth.login(EMAIL, password=NEW_PASSWORD)


async def test_parallel_verification_confirms_have_one_winner(on_both: Mailed) -> None:
    mailed = on_both
    user_id, token = await _unverified(mailed)
    await _one_winner(
        [_confirm_email(mailed, token) for _ in range(RACERS)], "invalid_verification_link"
    )
    assert (
        mailed.count("SELECT count(*) FROM outbox_events WHERE event_type = 'email.verified'") == 1
    )
    assert (
        mailed.count(
            "SELECT count(*) FROM users WHERE id = %s AND email_verified_at IS NOT NULL", user_id
        )
        == 1
    )


async def test_parallel_email_change_confirms_have_one_winner(on_both: Mailed) -> None:
    mailed = on_both
    _, token = await _change_link(mailed)
    await _one_winner(
        [_confirm_email(mailed, token) for _ in range(RACERS)], "invalid_verification_link"
    )
    await mailed.auth.login(NEW_EMAIL)
