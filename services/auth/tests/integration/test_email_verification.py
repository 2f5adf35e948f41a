"""Email verification over gRPC (issue 12 items 1 and 8), on SQLite and Postgres: the sign-up's
link, single use under a race, the newest link only, resends rate limited per user, GetMe's
emailVerified, and the first proof ending every earlier session (pre-hijacking)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from auth_email_links import Mailed, error_code, mailed_auth
from smtp_catcher import SmtpCatcher, serve_smtp_catcher

from palisade_api.auth.v1 import account_pb2
from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
RACERS = 20


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[SmtpCatcher, int]]:
    async with serve_smtp_catcher() as served:
        yield served


@pytest.fixture
async def mailed(auth_factory, smtp, database_url) -> AsyncIterator[Mailed]:
    async for harness in mailed_auth(
        auth_factory, smtp, database_url, email_verification_resends=2
    ):
        yield harness


def _verified_at(mailed: Mailed, user_id: str) -> object:
    [(verified_at,)] = mailed.rows("SELECT email_verified_at FROM users WHERE id = %s", user_id)
    return verified_at


async def test_sign_up_sends_a_link_that_verifies_once(mailed: Mailed) -> None:
    auth = mailed.auth
    signed = await mailed.sign_up("ada@example.com")
    tokens = await auth.login("ada@example.com")
    assert (await mailed.me(tokens.access_token)).email_verified is False
    token = await mailed.verification_token("ada@example.com")
    assert token.startswith("plsd_ev_")
    [message] = mailed.mail.to("ada@example.com")
    assert (
        "http://localhost:8080/auth/verify-email?token="
        in message.get_body(preferencelist=("plain",)).get_content()
    )
    # Stored hashed only.
    assert mailed.count("SELECT count(*) FROM account_tokens WHERE user_id = %s", signed.user_id)
    dump = repr(mailed.rows("SELECT * FROM account_tokens"))
    assert token not in dump
    assert token[8:] not in dump

    assert _verified_at(mailed, signed.user_id) is None
    await mailed.confirm(token)
    assert _verified_at(mailed, signed.user_id) is not None
    assert json.loads(_event(mailed))["details"]["via"] == "email_verification"

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await mailed.confirm(token)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(refused.value) == "invalid_verification_link"
    fresh = await auth.login("ada@example.com")
    assert (await mailed.me(fresh.access_token)).email_verified is True


def _event(mailed: Mailed, event_type: str = "email.verified") -> str:
    [(payload,)] = mailed.rows(
        "SELECT payload FROM outbox_events WHERE event_type = %s", event_type
    )
    return str(payload)


async def test_twenty_parallel_confirmations_one_wins(mailed: Mailed) -> None:
    signed = await mailed.sign_up("race@example.com")
    token = await mailed.verification_token("race@example.com")
    results = await asyncio.gather(
        *(mailed.confirm(token) for _ in range(RACERS)), return_exceptions=True
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1
    assert len(losses) == RACERS - 1
    assert {error_code(e) for e in losses} == {"invalid_verification_link"}
    assert _verified_at(mailed, signed.user_id) is not None
    assert (
        mailed.count("SELECT count(*) FROM outbox_events WHERE event_type = %s", "email.verified")
        == 1
    )


async def test_first_proof_ends_every_earlier_session(mailed: Mailed) -> None:
    auth = mailed.auth
    await mailed.sign_up("victim@example.com")  # the "attacker" signs up with the address
    held = [await auth.login("victim@example.com") for _ in range(2)]
    for tokens in held:
        await auth.validate(tokens.access_token)
    token = await mailed.verification_token("victim@example.com")
    await mailed.confirm(token)  # the address's owner follows the link
    for tokens in held:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await auth.validate(tokens.access_token)
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError):
            await auth.refresh(tokens.refresh_token)
    [(reason, count)] = mailed.rows(
        "SELECT revoked_reason, count(*) FROM sessions GROUP BY revoked_reason"
    )
    assert (reason, count) == ("email_verified", 2)
    # A later login keeps working, and a later proof (a magic link, say) ends nothing.
    after = await auth.login("victim@example.com")
    await auth.validate(after.access_token)


async def test_only_the_newest_link_works_and_resends_are_limited(mailed: Mailed) -> None:
    auth = mailed.auth
    await mailed.sign_up("resend@example.com")
    tokens = await auth.login("resend@example.com")
    grant = await auth.validate(tokens.access_token)
    first = await mailed.verification_token("resend@example.com")
    resend = account_pb2.ResendEmailVerificationRequest()
    await mailed.accounts.ResendEmailVerification(resend, metadata=auth.as_user(grant))
    second = await mailed.verification_token("resend@example.com", 2)
    assert second != first
    with pytest.raises(grpc.aio.AioRpcError) as retired:
        await mailed.confirm(first)
    assert error_code(retired.value) == "invalid_verification_link"

    await mailed.accounts.ResendEmailVerification(resend, metadata=auth.as_user(grant))
    with pytest.raises(grpc.aio.AioRpcError) as limited:  # the setting allows 2 per hour
        await mailed.accounts.ResendEmailVerification(resend, metadata=auth.as_user(grant))
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_code(limited.value) == "rate_limited"
    third = await mailed.verification_token("resend@example.com", 3)
    await mailed.confirm(third)

    # Verified: a resend (after the window) answers alike and sends nothing.
    auth.clock.advance(3601)
    fresh = await auth.validate((await auth.login("resend@example.com")).access_token)
    await mailed.accounts.ResendEmailVerification(resend, metadata=auth.as_user(fresh))
    await mailed.settled()
    verification_mails = [
        m
        for m in mailed.mail.to("resend@example.com")
        if m["Subject"] == "Verify your Palisade email address"
    ]
    assert len(verification_mails) == 3


async def test_malformed_expired_and_foreign_tokens_get_one_answer(mailed: Mailed) -> None:
    auth = mailed.auth
    await mailed.sign_up("expire@example.com")
    token = await mailed.verification_token("expire@example.com")
    auth.clock.advance(24 * 3600 + 1)
    for bad in (token, "plsd_ev_short", "plsd_ml_" + "A" * 43, "", "x" * 5000):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await mailed.confirm(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad[:20]
        assert error_code(refused.value) == "invalid_verification_link"


async def test_magic_link_redemption_proves_the_address(mailed: Mailed) -> None:
    auth = mailed.auth
    signed = await mailed.sign_up("magic@example.com")
    early = await auth.login("magic@example.com")
    await auth.stub.RequestMagicLink(
        pb.RequestMagicLinkRequest(email="magic@example.com"), metadata=auth.anonymous()
    )
    [mail] = await mailed.mails_to("magic@example.com", "Your Palisade sign-in link")
    from auth_email_links import MAGIC_LINK, token_in

    redeemed = await auth.stub.RedeemMagicLink(
        pb.RedeemMagicLinkRequest(token=token_in(mail, MAGIC_LINK)), metadata=auth.anonymous()
    )
    assert _verified_at(mailed, signed.user_id) is not None
    with pytest.raises(grpc.aio.AioRpcError):
        await auth.validate(early.access_token)  # made before the first proof: ended
    assert (await mailed.me(redeemed.access_token)).email_verified is True  # made after it


async def test_taken_unverified_address_tells_its_holder_so(mailed: Mailed) -> None:
    await mailed.sign_up("taken@example.com")
    again = await mailed.sign_up("taken@example.com", name="Mallory")
    assert again.user_id
    assert again.workspace_id
    [notice] = await mailed.mails_to("taken@example.com", "Sign-up attempt with your email address")
    text = notice.get_body(preferencelist=("plain",)).get_content()
    assert "never been verified" in text
    assert "signed out" in text
