"""Email change over gRPC (issue 12 item 3), on SQLite and Postgres: recent auth, 202 for a free
and a taken address alike, the confirm link moving the login address once (of 20 parallel
confirmations one wins), an address taken meanwhile refused with email_unavailable, the old
address told, its links retired, and sessions kept unless this was the first proof."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from auth_email_links import MAGIC_LINK, Mailed, error_code, mailed_auth, text_of, token_in
from smtp_catcher import SmtpCatcher, serve_smtp_catcher

from palisade_api.auth.v1 import account_pb2
from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
RACERS = 20
CHANGE_SUBJECT = "Confirm your new Palisade email address"
CHANGED_SUBJECT = "The email address of your Palisade account was changed"
IN_USE_SUBJECT = "Someone tried to use your email address"


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[SmtpCatcher, int]]:
    async with serve_smtp_catcher() as served:
        yield served


@pytest.fixture
async def mailed(auth_factory, smtp, database_url) -> AsyncIterator[Mailed]:
    async for harness in mailed_auth(auth_factory, smtp, database_url, email_change_requests=3):
        yield harness


async def _verified_user(mailed: Mailed, email: str) -> pb.TokenResponse:
    """Signed up and verified by its link, then logged in (after the proof)."""
    await mailed.sign_up(email)
    await mailed.confirm(await mailed.verification_token(email))
    return await mailed.auth.login(email)


async def _request(mailed: Mailed, tokens: pb.TokenResponse, new_email: str) -> None:
    grant = await mailed.auth.validate(tokens.access_token)
    await mailed.accounts.RequestEmailChange(
        account_pb2.RequestEmailChangeRequest(new_email=new_email),
        metadata=mailed.auth.as_user(grant),
    )


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


async def test_confirmed_change_moves_the_login_address(mailed: Mailed) -> None:
    auth = mailed.auth
    tokens = await _verified_user(mailed, "old@example.com")
    # A magic link sent to the old address before the change.
    await auth.stub.RequestMagicLink(
        pb.RequestMagicLinkRequest(email="old@example.com"), metadata=auth.anonymous()
    )
    [old_link_mail] = await mailed.mails_to("old@example.com", "Your Palisade sign-in link")
    await _request(mailed, tokens, "New@Example.com")
    [mail] = await mailed.mails_to("new@example.com", CHANGE_SUBJECT)
    token = token_in(mail)
    assert token.startswith("plsd_ev_")
    # Nothing moved yet: the old address still signs in, the new one doesn't.
    await auth.login("old@example.com")
    assert (await mailed.me(tokens.access_token)).email == "old@example.com"
    [(sealed,)] = mailed.rows(
        "SELECT new_email_ct FROM account_tokens WHERE purpose = %s", "email_change"
    )
    assert b"new@example.com" not in bytes(sealed)

    await mailed.confirm(token)
    me = await mailed.me(tokens.access_token)  # the session survives: not a first proof
    assert me.email == "new@example.com"
    assert me.email_verified is True
    await auth.login("new@example.com")
    refused = await _refused(auth.login("old@example.com"))
    assert error_code(refused) == "invalid_credentials"
    # The old address's magic link is retired, and the old address was told.
    retired = await _refused(
        auth.stub.RedeemMagicLink(
            pb.RedeemMagicLinkRequest(token=token_in(old_link_mail, MAGIC_LINK)),
            metadata=auth.anonymous(),
        )
    )
    assert error_code(retired) == "invalid_magic_link"
    [notice] = await mailed.mails_to("old@example.com", CHANGED_SUBJECT)
    assert "n…@example.com" in text_of(notice)
    assert "new@example.com" not in text_of(notice)
    types = [row[0] for row in mailed.rows("SELECT event_type FROM outbox_events ORDER BY id")]
    assert "email.change_requested" in types
    assert "email.changed" in types
    assert (await _refused(mailed.confirm(token))).code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_taken_address_answers_alike_and_its_owner_is_told(mailed: Mailed) -> None:
    tokens = await _verified_user(mailed, "mover@example.com")
    await mailed.sign_up("owner@example.com")
    await _request(mailed, tokens, "owner@example.com")  # no error: same answer as free
    [notice] = await mailed.mails_to("owner@example.com", IN_USE_SUBJECT)
    assert "Nothing was changed" in text_of(notice)
    assert (
        mailed.count("SELECT count(*) FROM account_tokens WHERE purpose = %s", "email_change") == 0
    )
    [(payload,)] = mailed.rows(
        "SELECT payload FROM outbox_events WHERE event_type = %s", "email.change_requested"
    )
    assert json.loads(payload)["reason"] == "email_in_use"


async def test_an_address_taken_before_confirmation_is_refused(mailed: Mailed) -> None:
    tokens = await _verified_user(mailed, "slow@example.com")
    await _request(mailed, tokens, "contested@example.com")
    [mail] = await mailed.mails_to("contested@example.com", CHANGE_SUBJECT)
    await mailed.sign_up("contested@example.com")  # someone else signs up with it first
    refused = await _refused(mailed.confirm(token_in(mail)))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_code(refused) == "email_unavailable"
    assert (await mailed.me(tokens.access_token)).email == "slow@example.com"
    await mailed.auth.login("slow@example.com")


async def test_twenty_parallel_confirmations_move_the_address_once(mailed: Mailed) -> None:
    tokens = await _verified_user(mailed, "racer@example.com")
    await _request(mailed, tokens, "raced@example.com")
    [mail] = await mailed.mails_to("raced@example.com", CHANGE_SUBJECT)
    token = token_in(mail)
    results = await asyncio.gather(
        *(mailed.confirm(token) for _ in range(RACERS)), return_exceptions=True
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1
    assert len(losses) == RACERS - 1
    assert {error_code(e) for e in losses} == {"invalid_verification_link"}
    assert (
        mailed.count("SELECT count(*) FROM outbox_events WHERE event_type = %s", "email.changed")
        == 1
    )
    assert (await mailed.me(tokens.access_token)).email == "raced@example.com"


async def test_a_first_proof_by_email_change_ends_earlier_sessions(mailed: Mailed) -> None:
    await mailed.sign_up("never@example.com")  # never verified
    tokens = await mailed.auth.login("never@example.com")
    await _request(mailed, tokens, "proven@example.com")
    [mail] = await mailed.mails_to("proven@example.com", CHANGE_SUBJECT)
    await mailed.confirm(token_in(mail))
    ended = await _refused(mailed.auth.validate(tokens.access_token))
    assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
    # The old (never proven) address's verification link no longer proves anything.
    old_link = await mailed.verification_token("never@example.com")
    assert error_code(await _refused(mailed.confirm(old_link))) == "invalid_verification_link"
    fresh = await mailed.auth.login("proven@example.com")
    assert (await mailed.me(fresh.access_token)).email_verified is True


async def test_change_needs_recent_auth_a_valid_address_and_is_rate_limited(
    mailed: Mailed,
) -> None:
    tokens = await _verified_user(mailed, "limits@example.com")
    bad = await _refused(_request(mailed, tokens, "not an address"))
    assert error_code(bad) == "invalid_email"
    for i in range(3):  # the setting allows 3 per hour
        await _request(mailed, tokens, f"next{i}@example.com")
    limited = await _refused(_request(mailed, tokens, "next9@example.com"))
    assert limited.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_code(limited) == "rate_limited"
    # Only the newest request's link works.
    first = token_in((await mailed.mails_to("next0@example.com", CHANGE_SUBJECT))[0])
    assert error_code(await _refused(mailed.confirm(first))) == "invalid_verification_link"

    mailed.auth.clock.advance(700)  # past the recent-auth age (600 s): refused before the limit
    stale = await _refused(_request(mailed, tokens, "later@example.com"))
    assert stale.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_code(stale) == "recent_auth_required"
