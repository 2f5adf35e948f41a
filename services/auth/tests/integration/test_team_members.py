"""`GET /v1/team/members` as auth answers it: members of the caller's workspace only, newest
first, a page at a time; people who are members (checked again in the database) and API keys
holding team:read (checked again here too)."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from palisade_api.auth.v1 import auth_pb2 as pb

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def _code(call) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), dict(caught.value.trailing_metadata() or ()).get(
        "palisade-error-code"
    )


class Team:
    """Ada owns a workspace; Grace joins it as admin, then Katherine as member. Mallory has
    a workspace of her own (and so does everyone else: sign-up makes one)."""

    def __init__(self, auth) -> None:
        self.auth = auth

    async def build(self) -> Team:
        auth = self.auth
        self.ada = await auth.sign_up("ada@example.com", name="Ada Lovelace")
        self.grace = await auth.sign_up("grace@example.com", name="Grace Hopper")
        self.katherine = await auth.sign_up("katherine@example.com", name="Katherine Johnson")
        self.mallory = await auth.sign_up("mallory@example.com", name="Mallory Moe")
        self.workspace = self.ada.workspace_id
        now = auth.clock.now()
        with auth.db() as conn:
            for user, role, later in ((self.grace, "admin", 1), (self.katherine, "member", 2)):
                conn.execute(
                    "INSERT INTO memberships (workspace_id, user_id, role, created_at)"
                    " VALUES (%s, %s, %s, %s)",
                    (self.workspace, user.user_id, role, now + timedelta(seconds=later)),
                )
        self.ada_grant = await auth.validate((await auth.login("ada@example.com")).access_token)
        return self

    def as_key(self, *scopes: str, workspace_id: str | None = None, acting: str | None = None):
        return self.auth.signing.marker(
            "gateway",
            principal="apikey:key_0123",
            workspace_id=workspace_id or self.workspace,
            scopes=scopes,
            key_mode="live",
            acting_user_id=acting or self.ada.user_id,
            client_ip="203.0.113.9",
        )

    async def list(self, metadata, **request) -> pb.ListTeamMembersResponse:
        return await self.auth.stub.ListTeamMembers(
            pb.ListTeamMembersRequest(**request), metadata=metadata
        )


@pytest.fixture
async def team(auth) -> Team:
    return await Team(auth).build()


async def test_a_member_sees_the_workspace_newest_first_and_nothing_else(team) -> None:
    listed = await team.list(team.auth.as_user(team.ada_grant))
    assert [(m.email, m.name, m.role) for m in listed.members] == [
        ("katherine@example.com", "Katherine Johnson", "member"),
        ("grace@example.com", "Grace Hopper", "admin"),
        ("ada@example.com", "Ada Lovelace", "owner"),
    ]
    assert [m.user_id for m in listed.members] == [
        team.katherine.user_id,
        team.grace.user_id,
        team.ada.user_id,
    ]
    joined = [m.joined_at.ToDatetime() for m in listed.members]
    assert joined == sorted(joined, reverse=True)
    assert listed.next_page_token == ""
    # Mallory's account, and the workspaces the others own, never show up.
    assert "mallory@example.com" not in str(listed)


async def test_pages_follow_each_other_without_overlap(team) -> None:
    as_ada = team.auth.as_user(team.ada_grant)
    first = await team.list(as_ada, page_size=2)
    assert [m.email for m in first.members] == ["katherine@example.com", "grace@example.com"]
    assert first.next_page_token
    second = await team.list(as_ada, page_size=2, page_token=first.next_page_token)
    assert [m.email for m in second.members] == ["ada@example.com"]
    assert second.next_page_token == ""
    for bad in ("not-a-token", "e30", "x" * 300):
        assert await _code(team.list(as_ada, page_token=bad)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_page_token",
        )
    assert await _code(team.list(as_ada, page_size=-1)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_page_size",
    )


async def test_a_person_must_be_a_member_of_the_workspace_asserted(team) -> None:
    auth = team.auth
    grant = await auth.validate((await auth.login("mallory@example.com")).access_token)
    foreign = auth.signing.marker(
        "gateway",
        principal=f"user:{team.mallory.user_id}",
        workspace_id=team.workspace,  # Ada's: Mallory is no member of it
        session_id=grant.session_id,
    )
    assert await _code(team.list(foreign)) == (grpc.StatusCode.PERMISSION_DENIED, "not_a_member")
    # Her own workspace: herself only.
    own = await team.list(auth.as_user(grant))
    assert [m.email for m in own.members] == ["mallory@example.com"]


async def test_an_api_key_needs_team_read(team) -> None:
    listed = await team.list(team.as_key("team:read", "visitors:read"))
    assert [m.email for m in listed.members] == [
        "katherine@example.com",
        "grace@example.com",
        "ada@example.com",
    ]
    for scopes in ((), ("visitors:read", "chats:read")):
        assert await _code(team.list(team.as_key(*scopes))) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "insufficient_scope",
        )


async def test_an_api_key_reads_only_its_own_workspace(team) -> None:
    mallory_key = team.as_key(
        "team:read", workspace_id=team.mallory.workspace_id, acting=team.mallory.user_id
    )
    listed = await team.list(mallory_key)
    assert [m.email for m in listed.members] == ["mallory@example.com"]
    # A key whose creator is no member of the key's workspace (removed since) reads nothing.
    orphan = team.as_key("team:read", acting=team.mallory.user_id)
    assert await _code(team.list(orphan)) == (grpc.StatusCode.PERMISSION_DENIED, "not_a_member")


async def test_services_and_anonymous_callers_are_refused(team) -> None:
    auth = team.auth
    as_service = auth.signing.marker("gateway", workspace_id=team.workspace)
    assert await _code(team.list(as_service)) == (grpc.StatusCode.PERMISSION_DENIED, "people_only")
    assert await _code(team.list(auth.anonymous())) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "unauthenticated",
    )
