"""Roles and removal over real gRPC, on SQLite and on real Postgres: who may change whom, the
last-owner rule under parallel demotions, the new role on the member's next request, and a
removed member's sessions (in that workspace only) and keys."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from sqlalchemy import select

from palisade.auth.accounts.key_revocations import key_revocation_requests
from palisade_api.auth.v1 import team_pb2

from .team_support import Team, refused, running_team

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def team(auth_factory, database_url: str):
    async with running_team(auth_factory, database_url) as running:
        yield running


async def _workspace(team: Team):
    """Ada owns a workspace; Grace is an admin there, Kay a member."""
    ada = await team.person("ada@example.com")
    grace = await team.person("grace@example.com", name="Grace")
    kay = await team.person("kay@example.com", name="Kay")
    await team.add(ada.workspace_id, grace, "admin")
    await team.add(ada.workspace_id, kay, "member", later=2)
    # Grace and Kay act in Ada's workspace: sessions there (sign-in lands in their own).
    return ada, await team.move(grace, ada.workspace_id), await team.move(kay, ada.workspace_id)


async def test_an_owner_changes_a_role_and_the_member_is_answered(team: Team) -> None:
    ada, _, kay = await _workspace(team)
    member = await team.change_role(ada, kay.user_id, "admin")
    assert (member.user_id, member.email, member.name, member.role) == (
        kay.user_id,
        "kay@example.com",
        "Kay",
        "admin",
    )
    assert await team.role(ada.workspace_id, kay.user_id) == "admin"
    [event] = await team.events("member.role_changed")
    assert event["subject"] == kay.user_id
    assert event["details"] == {"from": "member", "to": "admin"}


async def test_unknown_roles_are_invalid(team: Team) -> None:
    ada, _, kay = await _workspace(team)
    for role in ("", "Owner", "superuser", "admin "):
        assert await refused(team.change_role(ada, kay.user_id, role)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_role",
        )


async def test_nobody_grants_above_their_role_or_changes_someone_above_it(team: Team) -> None:
    ada, grace, kay = await _workspace(team)
    above = (grpc.StatusCode.PERMISSION_DENIED, "role_above_yours")
    assert await refused(team.change_role(grace, kay.user_id, "owner")) == above
    assert await refused(team.change_role(grace, ada.user_id, "member")) == above
    assert await team.role(ada.workspace_id, ada.user_id) == "owner"
    # An admin may make an admin, and demote one.
    assert (await team.change_role(grace, kay.user_id, "admin")).role == "admin"
    assert (await team.change_role(grace, kay.user_id, "member")).role == "member"


async def test_a_member_manages_nobody_whatever_the_assertion_claims(team: Team) -> None:
    _, grace, kay = await _workspace(team)
    # The stub signs "role: owner" into every assertion: auth reads the role in its database.
    assert await refused(team.change_role(kay, grace.user_id, "member")) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "insufficient_role",
    )
    assert await refused(team.remove(kay, grace.user_id)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "insufficient_role",
    )


async def test_the_last_owner_stays_an_owner(team: Team) -> None:
    ada, grace, _ = await _workspace(team)
    last = (grpc.StatusCode.ABORTED, "last_owner")
    assert await refused(team.change_role(ada, ada.user_id, "admin")) == last
    await team.change_role(ada, grace.user_id, "owner")
    assert (await team.change_role(ada, ada.user_id, "admin")).role == "admin"
    assert await refused(team.change_role(grace, grace.user_id, "member")) == last


async def test_two_last_owners_stepping_down_at_once_leave_one_owner(team: Team) -> None:
    """Each sees two owners when it starts; only the workspace lock makes the second one see
    the first one's change (and refuse)."""
    ada, grace, _ = await _workspace(team)
    for _ in range(3):
        await team.change_role(ada, grace.user_id, "owner")
        results = await asyncio.gather(
            team.change_role(ada, ada.user_id, "admin"),
            team.change_role(grace, grace.user_id, "admin"),
            return_exceptions=True,
        )
        wins = [r for r in results if not isinstance(r, BaseException)]
        losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(wins) == 1, results
        assert [loss.code() for loss in losses] == [grpc.StatusCode.ABORTED]
        roles = [await team.role(ada.workspace_id, p.user_id) for p in (ada, grace)]
        assert sorted(roles) == ["admin", "owner"]
        if roles[0] != "owner":  # Grace is the owner left: she makes Ada owner again
            await team.change_role(grace, ada.user_id, "owner")


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(team: Team) -> None:
    ada, grace, _ = await _workspace(team)
    await team.change_role(ada, grace.user_id, "owner")
    results = await asyncio.gather(
        team.change_role(ada, grace.user_id, "member"),
        team.change_role(grace, ada.user_id, "member"),
        return_exceptions=True,
    )
    assert len([r for r in results if not isinstance(r, BaseException)]) == 1, results
    roles = sorted([await team.role(ada.workspace_id, p.user_id) for p in (ada, grace)])
    assert roles == ["member", "owner"]


async def _session_in(team: Team, person, workspace_id: str):
    """A further session of `person` in `workspace_id`: (its tokens' access token, grant)."""
    moved = await team.move(person, workspace_id)
    return moved.access_token, moved.grant


async def _notice(events, reason: str):
    async with asyncio.timeout(10):
        async for event in events:
            if event.notice is not None and event.notice.reason == reason:
                return event.notice
    raise AssertionError("unreachable")


async def test_a_new_role_reaches_the_next_validation_and_every_gateway(team: Team) -> None:
    ada, _, kay = await _workspace(team)
    tokens, grant = await _session_in(team, kay, ada.workspace_id)
    assert (grant.workspace_id, grant.role) == (ada.workspace_id, "member")
    home = await team.session_of(kay.email, kay.user_id, kay.workspace_id)
    async with team.auth.servers[0].revocations.subscribe() as events:
        await team.change_role(ada, kay.user_id, "admin")
        notice = await _notice(events, "role_changed")
    # Every gateway forgets the member's sessions in this workspace (and only those); no
    # session ends: the next validation answers the new role.
    assert notice.user_id == kay.user_id
    assert set(notice.session_ids) == {grant.session_id, kay.grant.session_id}
    assert (await team.auth.validate(tokens)).role == "admin"
    assert (await team.auth.validate(home.access_token)).role == "owner"  # Kay's own workspace


async def test_a_removed_member_loses_sessions_there_and_keys_but_not_elsewhere(
    team: Team,
) -> None:
    ada, grace, kay = await _workspace(team)
    tokens, grant = await _session_in(team, kay, ada.workspace_id)
    async with team.auth.servers[0].revocations.subscribe() as events:
        await team.remove(grace, kay.user_id)
        notice = await _notice(events, "member_removed")
    assert set(notice.session_ids) == {grant.session_id, kay.grant.session_id}
    assert await team.role(ada.workspace_id, kay.user_id) is None
    assert await refused(team.auth.validate(tokens)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "invalid_token",
    )
    home = await team.session_of(kay.email, kay.user_id, kay.workspace_id)
    assert (await team.auth.validate(home.access_token)).workspace_id == kay.workspace_id
    async with team.engine.begin() as conn:
        requests = [dict(r._mapping) for r in await conn.execute(select(key_revocation_requests))]
    assert [(r["user_id"], r["workspace_id"], r["reason"]) for r in requests] == [
        (kay.user_id, ada.workspace_id, "member_removed")
    ]
    [event] = await team.events("member.removed")
    assert event["subject"] == kay.user_id
    assert event["reason"] == "removed"


async def test_who_may_remove_whom(team: Team) -> None:
    ada, grace, kay = await _workspace(team)
    stranger = await team.person("stranger@example.com")
    assert await refused(team.remove(grace, ada.user_id)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "role_above_yours",
    )
    assert await refused(team.remove(ada, ada.user_id)) == (grpc.StatusCode.ABORTED, "last_owner")
    for unknown in (stranger.user_id, "usr_" + "0" * 32, "nobody", "usr_\x00"):
        assert await refused(team.remove(ada, unknown)) == (
            grpc.StatusCode.NOT_FOUND,
            "not_found",
        )
    await team.remove(kay, kay.user_id)  # a member may leave
    [event] = await team.events("member.removed")
    assert event["reason"] == "left"
    await team.change_role(ada, grace.user_id, "owner")
    await team.remove(ada, ada.user_id)  # no longer the last owner: Ada may leave too


async def test_pending_invitations_die_with_their_senders_role(team: Team) -> None:
    ada, grace, _ = await _workspace(team)
    await team.invite(grace, "one@example.com", "admin")
    await team.invite(grace, "two@example.com", "member")
    await team.change_role(ada, grace.user_id, "member")  # the admin invitation dies
    listed = await team.stub.ListInvitations(
        team_pb2.ListInvitationsRequest(), metadata=team.as_person(ada.grant)
    )
    assert {(i.email, i.state) for i in listed.invitations} == {
        ("one@example.com", "revoked"),
        ("two@example.com", "pending"),
    }
    await team.remove(ada, grace.user_id)  # and the rest with the membership
    listed = await team.stub.ListInvitations(
        team_pb2.ListInvitationsRequest(), metadata=team.as_person(ada.grant)
    )
    assert {i.state for i in listed.invitations} == {"revoked"}


async def test_someone_removed_from_their_last_workspace_keeps_an_account(team: Team) -> None:
    ada = await team.person("ada@example.com")
    kay = await team.person("kay@example.com")
    await team.add(ada.workspace_id, kay, "member")
    await team.add(kay.workspace_id, ada, "owner")
    ada_at_kays = await team.move(ada, kay.workspace_id)
    await team.remove(ada_at_kays, kay.user_id)  # Ada stays an owner there
    [event] = await team.events("member.removed")
    assert event["details"]["personal_workspace_id"] is None  # Kay is still in Ada's
    await team.remove(ada, kay.user_id)  # Kay's last workspace
    event = next(
        e for e in await team.events("member.removed") if e["workspace_id"] == ada.workspace_id
    )
    personal = event["details"]["personal_workspace_id"]
    assert personal not in (None, kay.workspace_id, ada.workspace_id)
    # Kay signs in as before and lands in the new personal workspace, as its owner.
    again = await team.session_of(kay.email, kay.user_id, personal)
    assert (again.grant.workspace_id, again.grant.role) == (personal, "owner")
