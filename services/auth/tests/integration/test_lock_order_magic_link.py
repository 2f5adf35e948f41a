"""Redeeming a magic link keeps auth's lock order on real Postgres (issue 12): the owner's user
row before the link, its siblings and the sessions.

A password change (or a disable) in flight holds the user row (its UPDATE comes first) and goes
on to retire the user's magic links. A redemption submitted meanwhile must wait for the user row
before it locks or uses up any link: otherwise it holds the links the change is about to retire
while it waits for the row the change holds (to prove the address, to sign in), a deadlock.
Deterministic: the test holds the change's transaction open, sees (pg_blocking_pids) that the
redemption waits for it, and checks with NOWAIT probes that the redemption holds no link yet.
SQLite runs one writer at a time and is covered by the magic-link tests on both backends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from auth_email_links import MAGIC_LINK, Mailed, error_code, mailed_auth, token_in
from smtp_catcher import serve_smtp_catcher

from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import MAGIC_LINK as MAGIC_LINK_PURPOSE
from palisade.auth.links.tables import MAGIC_LINK_TABLE
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
SUBJECT = "Your Palisade sign-in link"
EMAIL = "link@example.com"


@pytest.fixture
async def mailed(auth_factory, postgres_url) -> AsyncIterator[Mailed]:
    async with serve_smtp_catcher() as smtp:
        async for harness in mailed_auth(auth_factory, smtp, postgres_url):
            yield harness


async def _links(mailed: Mailed, count: int) -> list[str]:
    for _ in range(count):
        await mailed.auth.stub.RequestMagicLink(
            pb.RequestMagicLinkRequest(email=EMAIL), metadata=mailed.auth.anonymous()
        )
    mails = await mailed.mails_to(EMAIL, SUBJECT, count)
    return [token_in(mail, MAGIC_LINK) for mail in mails]


def _redeem(mailed: Mailed, token: str):
    return mailed.auth.stub.RedeemMagicLink(
        pb.RedeemMagicLinkRequest(token=token), metadata=mailed.auth.anonymous()
    )


@pytest.mark.parametrize("verified", [True, False], ids=["verified", "first_proof"])
async def test_a_redemption_waits_for_the_user_row_before_it_takes_any_link(
    mailed: Mailed, verified: bool
) -> None:
    signed_up = await mailed.sign_up(EMAIL)
    user_id = signed_up.user_id
    if verified:
        await mailed.auth.verify_email(user_id)
    token, sibling = await _links(mailed, 2)
    engine = create_engine(mailed.auth.auth_db_url)
    try:
        async with AuthStore(engine=engine).transaction() as change:
            blocker = await backend_pid(change.conn)
            # What ChangePassword does first: the new hash, which locks the user row.
            user = await change.user(user_id)
            assert user is not None
            now = mailed.auth.clock.now()
            assert await change.replace_password_hash(
                user_id, user.password_hash, UNUSABLE_PASSWORD_HASH, now, changed=True
            )
            redemption = start(_redeem(mailed, token))
            await wait_until_blocked_by(mailed.auth.auth_db_url, blocker, redemption)
            # Waiting for the user row, and holding none of the links the change retires next.
            for link in (token, sibling):
                assert await row_is_free(
                    mailed.auth.auth_db_url,
                    "SELECT 1 FROM magic_links WHERE token_hash = %s FOR UPDATE NOWAIT",
                    [check_token(link, TokenKind.MAGIC_LINK)],
                ), "the redemption took a link before the user row"
            # Had the redemption held them, this would wait for it while it waits for us.
            await SingleUseTokens(
                table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK_PURPOSE, clock=mailed.auth.clock
            ).retire(change, user_id)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await redemption
    finally:
        await engine.dispose()
    # It then found its link retired with the old password: refused, nobody signed in.
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_code(refused.value) == "invalid_magic_link"
    assert mailed.count("SELECT count(*) FROM sessions WHERE user_id = %s", user_id) == 0


async def test_a_redemption_that_waited_signs_in_once_the_row_is_free(mailed: Mailed) -> None:
    """A login in flight holds the user row shared; the redemption takes it exclusively (a
    first proof updates it), so it waits for that too, and when the login ends it carries on:
    signed in once, and the sibling link retired with it."""
    user_id = (await mailed.sign_up(EMAIL)).user_id
    await mailed.auth.verify_email(user_id)
    token, sibling = await _links(mailed, 2)
    async with user_row_held(mailed.auth.auth_db_url, user_id, exclusive=False) as blocker:
        redemption = start(_redeem(mailed, token))
        await wait_until_blocked_by(mailed.auth.auth_db_url, blocker, redemption)
    signed_in = await redemption
    assert (await mailed.auth.validate(signed_in.access_token)).user_id == user_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _redeem(mailed, sibling)
    assert error_code(refused.value) == "invalid_magic_link"
