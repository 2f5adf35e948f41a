"""Invitations over real gRPC with a real SMTP catcher, on SQLite and on real Postgres: the
emailed link, who may invite whom, single use under 20 parallel accepts, expiry on the
injectable clock, the address binding, replacement and revocation, and listing."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import func, select

from palisade.auth.accounts.key_revocations import key_revocation_requests
from palisade.auth.store import users
from palisade.auth.team.invitation_records import invitations
from palisade_api.auth.v1 import team_pb2

from .team_support import Team, refused, running_team

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
NEW_PASSWORD = "a long and unguessable passphrase"


@pytest.fixture
async def team(auth_factory, database_url: str):
    async with running_team(auth_factory, database_url) as running:
        yield running


async def test_a_new_person_joins_by_the_emailed_link(team: Team) -> None:
    ada = await team.person("ada@example.com")
    created = await team.invite(ada, "Newcomer@Example.com", "admin")
    assert created.invitation_id.startswith("inv_")
    assert created.expires_at.ToDatetime() == (team.auth.clock.now() + timedelta(days=7)).replace(
        tzinfo=None
    )
    token = await team.invitation_token("newcomer@example.com")
    message = team.mail.to("newcomer@example.com")[0]
    assert "/auth/invitation?token=plsd_inv_" in str(message.get_body(("plain",)).get_content())
    # Only the token's hash is stored, never the token or the address in plaintext.
    async with team.engine.begin() as conn:
        [row] = (await conn.execute(select(invitations))).all()
    assert row.token_hash == hashlib.sha256(token.encode()).digest()
    assert b"newcomer" not in bytes(row.email_ct)

    tokens = await team.accept(token, name="New Comer", password=NEW_PASSWORD)
    grant = await team.auth.validate(tokens.access_token)
    assert (grant.workspace_id, grant.role) == (ada.workspace_id, "admin")
    async with team.engine.begin() as conn:
        user = (await conn.execute(select(users).where(users.c.id == grant.user_id))).one()
    assert user.email_verified_at == team.auth.clock.now()  # the link proved the address
    # A brand-new account had no earlier holder and no API keys: its first proof asks apikeys
    # for nothing (a request could land after the member's first key and revoke it).
    async with team.engine.begin() as conn:
        [queued] = (
            await conn.execute(
                select(func.count())
                .select_from(key_revocation_requests)
                .where(key_revocation_requests.c.user_id == grant.user_id)
            )
        ).one()
    assert queued == 0
    # The new account logs in with its password like any other (into its only workspace).
    login = await team.auth.login("newcomer@example.com", NEW_PASSWORD)
    assert (await team.auth.validate(login.access_token)).workspace_id == ada.workspace_id
    [joined] = await team.events("member.joined")
    assert joined["details"]["new_account"] is True
    assert [e["details"]["role"] for e in await team.events("member.invited")] == ["admin"]


async def test_a_new_person_needs_a_name_and_a_good_password(team: Team) -> None:
    ada = await team.person("ada@example.com")
    await team.invite(ada, "new@example.com")
    token = await team.invitation_token("new@example.com")
    assert await refused(team.accept(token)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "name_and_password_required",
    )
    assert await refused(team.accept(token, name="N", password="short")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "password_too_short",
    )
    assert await refused(team.accept(token, name="N", password="password1234")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "password_too_common",
    )
    # Refusals consume nothing: the link still works.
    await team.accept(token, name="N", password=NEW_PASSWORD)


async def test_an_existing_user_joins_signed_in_with_the_invited_address(team: Team) -> None:
    ada = await team.person("ada@example.com")
    grace = await team.person("grace@example.com")
    mallory = await team.person("mallory@example.com")
    await team.invite(ada, "grace@example.com")
    token = await team.invitation_token("grace@example.com")
    # Without a bearer: the address has an account, so a password of its own is refused.
    assert await refused(team.accept(token, name="G", password=NEW_PASSWORD)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "sign_in_required",
    )
    assert await refused(team.accept(token, person=mallory)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "invitation_email_mismatch",
    )
    tokens = await team.accept(token, person=grace)
    grant = await team.auth.validate(tokens.access_token)
    assert (grant.user_id, grant.workspace_id, grant.role) == (
        grace.user_id,
        ada.workspace_id,
        "member",
    )
    # The session she sent stays, in her own workspace.
    assert (await team.auth.validate(grace.access_token)).workspace_id == grace.workspace_id
    assert await refused(team.accept(token, person=grace)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_invitation",
    )


async def test_of_twenty_parallel_accepts_exactly_one_wins(team: Team) -> None:
    ada = await team.person("ada@example.com")
    await team.invite(ada, "racer@example.com")
    token = await team.invitation_token("racer@example.com")
    results = await asyncio.gather(
        *(team.accept(token, name="Racer", password=NEW_PASSWORD) for _ in range(20)),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    codes = {
        dict(r.trailing_metadata() or ()).get("palisade-error-code")
        for r in results
        if isinstance(r, grpc.aio.AioRpcError)
    }
    assert len(wins) == 1, results
    assert codes == {"invalid_invitation"}
    async with team.engine.begin() as conn:
        assert len((await conn.execute(select(users))).all()) == 2  # Ada and the one winner


async def test_an_invitation_expires_after_seven_days(team: Team) -> None:
    ada = await team.person("ada@example.com")
    await team.invite(ada, "late@example.com")
    token = await team.invitation_token("late@example.com")
    team.auth.clock.advance(timedelta(days=7))
    assert await refused(team.accept(token, name="Late", password=NEW_PASSWORD)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "invitation_expired",
    )
    listed = await team.stub.ListInvitations(
        team_pb2.ListInvitationsRequest(), metadata=team.as_person(ada.grant)
    )
    assert [i.state for i in listed.invitations] == ["expired"]


async def test_who_may_invite_whom(team: Team) -> None:
    ada = await team.person("ada@example.com")
    grace = await team.person("grace@example.com")
    kay = await team.person("kay@example.com")
    await team.add(ada.workspace_id, grace, "admin")
    await team.add(ada.workspace_id, kay, "member", later=2)
    grace, kay = await team.move(grace, ada.workspace_id), await team.move(kay, ada.workspace_id)
    assert await refused(team.invite(grace, "boss@example.com", "owner")) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "role_above_yours",
    )
    assert await refused(team.invite(kay, "friend@example.com")) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "insufficient_role",
    )
    assert await refused(team.invite(ada, "x@example.com", "root")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_role",
    )
    assert await refused(team.invite(ada, "not an address")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_email",
    )
    assert await refused(team.invite(ada, "KAY@example.com")) == (
        grpc.StatusCode.ALREADY_EXISTS,
        "already_member",
    )
    await team.invite(grace, "helper@example.com", "admin")


async def test_an_unverified_account_may_not_invite(team: Team) -> None:
    ada = await team.person("ada@example.com", verified=False)
    assert await refused(team.invite(ada, "friend@example.com")) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "email_not_verified",
    )


async def test_unverified_accounts_may_invite_when_the_setting_says_so(
    auth_factory, database_url: str
) -> None:
    async with running_team(auth_factory, database_url, unverified_restrictions=[]) as team:
        ada = await team.person("ada@example.com", verified=False)
        await team.invite(ada, "friend@example.com")


async def test_re_inviting_replaces_and_revoking_kills_the_link(team: Team) -> None:
    ada = await team.person("ada@example.com")
    first = await team.invite(ada, "twice@example.com", "member")
    old = await team.invitation_token("twice@example.com")
    team.auth.clock.advance(timedelta(seconds=1))
    second = await team.invite(ada, "twice@example.com", "admin")
    new = await team.invitation_token("twice@example.com", nth=2)
    assert await refused(team.accept(old, name="T", password=NEW_PASSWORD)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_invitation",
    )
    listed = await team.stub.ListInvitations(
        team_pb2.ListInvitationsRequest(), metadata=team.as_person(ada.grant)
    )
    assert [(i.invitation_id, i.state, i.role) for i in listed.invitations] == [
        (second.invitation_id, "pending", "admin"),
        (first.invitation_id, "revoked", "member"),
    ]
    await team.stub.RevokeInvitation(
        team_pb2.RevokeInvitationRequest(invitation_id=second.invitation_id),
        metadata=team.as_person(ada.grant),
    )
    assert await refused(team.accept(new, name="T", password=NEW_PASSWORD)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_invitation",
    )
    assert [e["reason"] for e in await team.events("invitation.revoked")] == [
        "replaced",
        "revoked",
    ]


async def test_other_workspaces_invitations_are_not_found(team: Team) -> None:
    ada = await team.person("ada@example.com")
    mallory = await team.person("mallory@example.com")
    theirs = await team.invite(ada, "friend@example.com")
    for invitation_id in (theirs.invitation_id, "inv_" + "0" * 32, "inv_\x00", "../x"):
        assert await refused(
            team.stub.RevokeInvitation(
                team_pb2.RevokeInvitationRequest(invitation_id=invitation_id),
                metadata=team.as_person(mallory.grant),
            )
        ) == (grpc.StatusCode.NOT_FOUND, "not_found")
    listed = await team.stub.ListInvitations(
        team_pb2.ListInvitationsRequest(), metadata=team.as_person(mallory.grant)
    )
    assert list(listed.invitations) == []


async def test_an_accepted_invitation_cannot_be_revoked(team: Team) -> None:
    ada = await team.person("ada@example.com")
    created = await team.invite(ada, "new@example.com")
    await team.accept(
        await team.invitation_token("new@example.com"), name="N", password=NEW_PASSWORD
    )
    assert await refused(
        team.stub.RevokeInvitation(
            team_pb2.RevokeInvitationRequest(invitation_id=created.invitation_id),
            metadata=team.as_person(ada.grant),
        )
    ) == (grpc.StatusCode.ALREADY_EXISTS, "invitation_accepted")


async def test_invitations_page_newest_first(team: Team) -> None:
    ada = await team.person("ada@example.com")
    ids = []
    for n in range(5):
        ids.append((await team.invite(ada, f"p{n}@example.com")).invitation_id)
        team.auth.clock.advance(timedelta(seconds=1))
    seen, token = [], ""
    while True:
        page = await team.stub.ListInvitations(
            team_pb2.ListInvitationsRequest(page_size=2, page_token=token),
            metadata=team.as_person(ada.grant),
        )
        seen += [(i.invitation_id, i.email, i.created_by) for i in page.invitations]
        token = page.next_page_token
        if not token:
            break
    assert seen == [(ids[n], f"p{n}@example.com", ada.user_id) for n in reversed(range(5))]
    assert await refused(
        team.stub.ListInvitations(
            team_pb2.ListInvitationsRequest(page_token="nonsense"),
            metadata=team.as_person(ada.grant),
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "invalid_page_token")


async def test_malformed_and_unknown_tokens_are_invalid(team: Team) -> None:
    for token in ("", "plsd_inv_short", "plsd_ml_" + "A" * 43, "plsd_inv_" + "A" * 43):
        assert await refused(team.accept(token, name="N", password=NEW_PASSWORD)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid_invitation",
        )
