"""What an account's earlier holder keeps when its owner takes it back, on SQLite and Postgres
(accounts/address_proof.py): an email-change link asked for before (by a pre-hijacker, or from
a stolen session) dies with the first proof, a password change, a reset and "sign out
everywhere", and confirms only while its requesting session lives; a first proof by magic link
makes the earlier password unusable (login answers invalid_credentials); a first proof revokes
the account's open invitations and asks apikeys to revoke its keys; and a change request's
effect on earlier links does not depend on whether the new address is registered."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from auth_email_links import MAGIC_LINK as MAGIC_LINK_URL
from auth_email_links import PASSWORD, Mailed, error_code, mailed_auth, text_of, token_in
from smtp_catcher import SmtpCatcher, serve_smtp_catcher

from palisade.auth.passwords.hashing import UNUSABLE_PASSWORD_HASH
from palisade_api.auth.v1 import account_pb2, password_reset_pb2_grpc
from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import password_reset_pb2 as rpb

from .team_support import running_team

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
CHANGE_SUBJECT = "Confirm your new Palisade email address"
SIGN_IN_SUBJECT = "Your Palisade sign-in link"
RESET_SUBJECT = "Reset your Palisade password"
ATTACKER_IP = "198.51.100.66"
NEW_PASSWORD = "the owner's own new passphrase"
_RESET_TOKEN = re.compile(r"/auth/reset-password\?token=([A-Za-z0-9_-]+)")


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[SmtpCatcher, int]]:
    async with serve_smtp_catcher() as served:
        yield served


@pytest.fixture
async def mailed(auth_factory, smtp, database_url) -> AsyncIterator[Mailed]:
    async for harness in mailed_auth(auth_factory, smtp, database_url, email_change_requests=10):
        yield harness


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


async def _request_change(
    mailed: Mailed, tokens: pb.TokenResponse, new_email: str, ip: str = "203.0.113.7"
) -> None:
    grant = await mailed.auth.validate(tokens.access_token)
    await mailed.accounts.RequestEmailChange(
        account_pb2.RequestEmailChangeRequest(new_email=new_email),
        metadata=mailed.auth.as_user(grant, ip=ip),
    )


async def _magic_link_sign_in(mailed: Mailed, email: str, nth: int = 1) -> pb.TokenResponse:
    await mailed.auth.stub.RequestMagicLink(
        pb.RequestMagicLinkRequest(email=email), metadata=mailed.auth.anonymous()
    )
    mails = await mailed.mails_to(email, SIGN_IN_SUBJECT, nth)
    result: pb.TokenResponse = await mailed.auth.stub.RedeemMagicLink(
        pb.RedeemMagicLinkRequest(token=token_in(mails[nth - 1], MAGIC_LINK_URL)),
        metadata=mailed.auth.anonymous(),
    )
    return result


async def _verified_user(mailed: Mailed, email: str) -> pb.TokenResponse:
    await mailed.sign_up(email)
    await mailed.confirm(await mailed.verification_token(email))
    return await mailed.auth.login(email)


async def _link_is_dead(mailed: Mailed, token: str, owner: pb.TokenResponse, email: str) -> None:
    refused = await _refused(mailed.confirm(token, ip=ATTACKER_IP))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_code(refused) == "invalid_verification_link"
    assert (await mailed.me(owner.access_token)).email == email  # the account did not move


@asynccontextmanager
async def _resets(
    mailed: Mailed,
) -> AsyncIterator[password_reset_pb2_grpc.PasswordResetServiceStub]:
    async with mailed.auth.signing.channel(mailed.auth.servers[0].running.target) as channel:
        yield password_reset_pb2_grpc.PasswordResetServiceStub(channel)


async def _reset_password(mailed: Mailed, email: str, nth: int = 1) -> None:
    async with _resets(mailed) as resets:
        await resets.RequestPasswordReset(
            rpb.RequestPasswordResetRequest(email=email), metadata=mailed.auth.anonymous()
        )
        mails = await mailed.mails_to(email, RESET_SUBJECT, nth)
        [token] = _RESET_TOKEN.findall(text_of(mails[nth - 1]))
        await resets.ConfirmPasswordReset(
            rpb.ConfirmPasswordResetRequest(token=token, new_password=NEW_PASSWORD),
            metadata=mailed.auth.anonymous(),
        )


def _events(mailed: Mailed, event_type: str, user_id: str) -> int:
    return mailed.count(
        "SELECT COUNT(*) FROM outbox_events WHERE event_type = %s AND payload LIKE %s",
        event_type,
        f"%{user_id}%",
    )


# H1: pending email changes


async def test_a_change_link_asked_for_before_the_first_proof_dies_with_it(
    mailed: Mailed,
) -> None:
    signed = await mailed.sign_up("victim@example.com")  # the pre-hijack
    attacker = await mailed.auth.login("victim@example.com", ip=ATTACKER_IP)
    await _request_change(mailed, attacker, "drop@evil.example", ip=ATTACKER_IP)
    [held] = await mailed.mails_to("drop@evil.example", CHANGE_SUBJECT)
    owner = await _magic_link_sign_in(mailed, "victim@example.com")  # the first proof
    assert (await mailed.me(owner.access_token)).email_verified
    await _link_is_dead(mailed, token_in(held), owner, "victim@example.com")
    assert (await mailed.me(owner.access_token)).user_id == signed.user_id


async def test_a_change_link_dies_with_a_password_change(mailed: Mailed) -> None:
    owner = await _verified_user(mailed, "ada@example.com")
    stolen = await mailed.auth.login("ada@example.com", ip=ATTACKER_IP)
    await _request_change(mailed, stolen, "drop@evil.example", ip=ATTACKER_IP)
    # The owner's own pending change ends too: whoever asked for it, the old password did.
    await _request_change(mailed, owner, "ada.new@example.com")
    [theirs] = await mailed.mails_to("drop@evil.example", CHANGE_SUBJECT)
    [own] = await mailed.mails_to("ada.new@example.com", CHANGE_SUBJECT)
    grant = await mailed.auth.validate(owner.access_token)
    await mailed.auth.stub.ChangePassword(
        pb.ChangePasswordRequest(current_password=PASSWORD, new_password=NEW_PASSWORD),
        metadata=mailed.auth.as_user(grant),
    )
    await _link_is_dead(mailed, token_in(theirs), owner, "ada@example.com")
    await _link_is_dead(mailed, token_in(own), owner, "ada@example.com")  # its session lives


@pytest.mark.parametrize("keep_current", [True, False])
async def test_a_change_link_dies_with_sign_out_everywhere(
    mailed: Mailed, keep_current: bool
) -> None:
    owner = await _verified_user(mailed, "ada@example.com")
    # Asked for in the session the owner keeps: only the retirement can end it.
    await _request_change(mailed, owner, "drop@evil.example", ip=ATTACKER_IP)
    [held] = await mailed.mails_to("drop@evil.example", CHANGE_SUBJECT)
    grant = await mailed.auth.validate(owner.access_token)
    await mailed.auth.stub.RevokeAllSessions(
        pb.RevokeAllSessionsRequest(keep_current=keep_current),
        metadata=mailed.auth.as_user(grant),
    )
    fresh = await mailed.auth.login("ada@example.com")
    await _link_is_dead(mailed, token_in(held), fresh, "ada@example.com")


async def test_a_change_link_dies_with_a_password_reset(mailed: Mailed) -> None:
    owner = await _verified_user(mailed, "ada@example.com")
    await _request_change(mailed, owner, "drop@evil.example", ip=ATTACKER_IP)
    [held] = await mailed.mails_to("drop@evil.example", CHANGE_SUBJECT)
    await _reset_password(mailed, "ada@example.com")
    fresh = await mailed.auth.login("ada@example.com", NEW_PASSWORD)
    await _link_is_dead(mailed, token_in(held), fresh, "ada@example.com")


async def test_a_change_link_confirms_only_while_its_session_lives(mailed: Mailed) -> None:
    owner = await _verified_user(mailed, "ada@example.com")
    other = await mailed.auth.login("ada@example.com", ip=ATTACKER_IP)
    await _request_change(mailed, other, "drop@evil.example", ip=ATTACKER_IP)
    [held] = await mailed.mails_to("drop@evil.example", CHANGE_SUBJECT)
    grant = await mailed.auth.validate(owner.access_token)
    other_id = (await mailed.auth.validate(other.access_token)).session_id
    # One session signed out (not "everywhere"): nothing retires the link but its binding.
    await mailed.auth.stub.RevokeSession(
        pb.RevokeSessionRequest(id=other_id), metadata=mailed.auth.as_user(grant)
    )
    await _link_is_dead(mailed, token_in(held), owner, "ada@example.com")
    assert _events(mailed, "email.change_failed", grant.user_id) == 1
    # The requesting session still live: the link works (and is used up once).
    await _request_change(mailed, owner, "ada.new@example.com")
    [mine] = await mailed.mails_to("ada.new@example.com", CHANGE_SUBJECT)
    await mailed.confirm(token_in(mine))
    assert (await mailed.me(owner.access_token)).email == "ada.new@example.com"


# M1: no registration oracle through an earlier link


async def _earlier_link_survives(
    mailed: Mailed, tokens: pb.TokenResponse, mine: str, target: str
) -> bool:
    await _request_change(mailed, tokens, mine)  # L1, to a mailbox the prober reads
    [mail] = await mailed.mails_to(mine, CHANGE_SUBJECT)
    await _request_change(mailed, tokens, target)  # the probe: 202 either way
    try:
        await mailed.confirm(token_in(mail))
    except grpc.aio.AioRpcError as refused:
        return error_code(refused) != "invalid_verification_link"
    return True


async def test_a_change_request_retires_earlier_links_whatever_the_address(
    mailed: Mailed,
) -> None:
    await mailed.sign_up("someone@victim.example")  # registered
    prober = await _verified_user(mailed, "prober@evil.example")
    taken = await _earlier_link_survives(
        mailed, prober, "m1@evil.example", "someone@victim.example"
    )
    free = await _earlier_link_survives(mailed, prober, "m2@evil.example", "nobody@victim.example")
    own = await _earlier_link_survives(mailed, prober, "m3@evil.example", "prober@evil.example")
    assert (taken, free, own) == (False, False, False)
    assert (await mailed.me(prober.access_token)).email == "prober@evil.example"


# H2: the pre-hijacker's password


async def test_a_first_proof_by_magic_link_makes_the_earlier_password_unusable(
    mailed: Mailed,
) -> None:
    signed = await mailed.sign_up("victim@example.com")  # the attacker chose PASSWORD
    await mailed.auth.login("victim@example.com", ip=ATTACKER_IP)
    owner = await _magic_link_sign_in(mailed, "victim@example.com")
    [mail] = await mailed.mails_to("victim@example.com", SIGN_IN_SUBJECT)
    assert "password reset" in text_of(mail)  # the owner is told how to get a password
    refused = await _refused(mailed.auth.login("victim@example.com", ip=ATTACKER_IP))
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_code(refused) == "invalid_credentials"
    [(stored,)] = mailed.rows("SELECT password_hash FROM users WHERE id = %s", signed.user_id)
    assert stored == UNUSABLE_PASSWORD_HASH
    assert _events(mailed, "user.password_cleared", signed.user_id) == 1
    await mailed.auth.validate(owner.access_token)  # the owner's session made by the link
    # A later proof clears nothing more: the owner's reset password then stays.
    await _reset_password(mailed, "victim@example.com")
    await _magic_link_sign_in(mailed, "victim@example.com", nth=2)
    again = await mailed.auth.login("victim@example.com", NEW_PASSWORD)
    assert list((await mailed.auth.validate(again.access_token)).restrictions) == []
    assert _events(mailed, "user.password_cleared", signed.user_id) == 1


async def test_a_first_proof_by_the_verification_link_keeps_the_password(
    mailed: Mailed,
) -> None:
    signed = await mailed.sign_up("ada@example.com")
    [mail] = await mailed.mails_to("ada@example.com", "Verify your Palisade email address")
    text = text_of(mail)
    assert "Confirm only if you created this account" in text
    assert "don't confirm" in text
    assert "Reset the password instead" in text
    await mailed.confirm(token_in(mail))
    tokens = await mailed.auth.login("ada@example.com")
    assert list((await mailed.auth.validate(tokens.access_token)).restrictions) == []
    assert _events(mailed, "user.password_cleared", signed.user_id) == 0


async def test_the_taken_address_notice_recommends_a_password_reset(mailed: Mailed) -> None:
    await mailed.sign_up("victim@example.com")
    await mailed.sign_up("victim@example.com")  # the owner tries to sign up
    [notice] = await mailed.mails_to(
        "victim@example.com", "Sign-up attempt with your email address"
    )
    text = text_of(notice)
    assert "password reset" in text
    assert "sign-in link" not in text


# M3: what outlives sessions


async def test_a_first_proof_revokes_open_invitations_and_asks_for_key_revocation(
    auth_factory, database_url: str
) -> None:
    async with running_team(auth_factory, database_url, unverified_restrictions=[]) as team:
        attacker = await team.person("victim@example.com", verified=False)
        await team.invite(attacker, "accomplice@evil.example")
        grant = attacker.grant
        await team.auth.stub.RequestMagicLink(
            pb.RequestMagicLinkRequest(email="victim@example.com"),
            metadata=team.auth.anonymous(),
        )
        mail = await _mail_to(team, "victim@example.com", SIGN_IN_SUBJECT)
        owner = await team.auth.stub.RedeemMagicLink(
            pb.RedeemMagicLinkRequest(token=token_in(mail, MAGIC_LINK_URL)),
            metadata=team.auth.anonymous(),
        )
        await team.auth.validate(owner.access_token)
        async with team.engine.begin() as conn:
            revoked = (
                await conn.exec_driver_sql(
                    "SELECT revoked_at FROM invitations WHERE created_by = ?"
                    if team.engine.dialect.name == "sqlite"
                    else "SELECT revoked_at FROM invitations WHERE created_by = %s",
                    (grant.user_id,),
                )
            ).all()
            requests = (
                await conn.exec_driver_sql(
                    "SELECT reason, workspace_id FROM key_revocation_requests WHERE user_id = ?"
                    if team.engine.dialect.name == "sqlite"
                    else "SELECT reason, workspace_id FROM key_revocation_requests"
                    " WHERE user_id = %s",
                    (grant.user_id,),
                )
            ).all()
        assert len(revoked) == 1
        assert revoked[0][0] is not None
        assert [tuple(r) for r in requests] == [("account_reclaimed", None)]
        assert [e["reason"] for e in await team.events("invitation.revoked")] == [
            "account_reclaimed"
        ]
        # A later proof (another sign-in link) asks for nothing more.
        await team.auth.stub.RequestMagicLink(
            pb.RequestMagicLinkRequest(email="victim@example.com"),
            metadata=team.auth.anonymous(),
        )
        second = await _mail_to(team, "victim@example.com", SIGN_IN_SUBJECT, nth=2)
        await team.auth.stub.RedeemMagicLink(
            pb.RedeemMagicLinkRequest(token=token_in(second, MAGIC_LINK_URL)),
            metadata=team.auth.anonymous(),
        )
        async with team.engine.begin() as conn:
            total = (
                await conn.exec_driver_sql("SELECT COUNT(*) FROM key_revocation_requests")
            ).scalar_one()
        assert total == 1


async def _mail_to(team: Any, email: str, subject: str, nth: int = 1) -> Any:
    async with asyncio.timeout(10):
        while True:
            found = [m for m in team.mail.to(email) if m["Subject"] == subject]
            if len(found) >= nth:
                return found[nth - 1]
            team.mail.arrived.clear()
            await team.mail.arrived.wait()
