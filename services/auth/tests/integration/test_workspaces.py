"""A person's workspaces over real gRPC, on SQLite and on real Postgres: the list with a role
in each, and moving a session to another workspace (the old one ends; the login carries on)."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import team_pb2

from .team_support import Team, refused, running_team

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def team(auth_factory, database_url: str):
    async with running_team(auth_factory, database_url) as running:
        yield running


async def _mine(team: Team, person) -> list[tuple[str, str, str]]:
    listed = await team.stub.ListMyWorkspaces(
        team_pb2.ListMyWorkspacesRequest(), metadata=team.as_person(person.grant)
    )
    return [(w.workspace_id, w.name, w.role) for w in listed.workspaces]


async def test_a_person_lists_their_workspaces_with_their_role(team: Team) -> None:
    ada = await team.person("ada@example.com")
    kay = await team.person("kay@example.com")
    await team.add(ada.workspace_id, kay, "admin")
    assert await _mine(team, kay) == [
        (kay.workspace_id, "My workspace", "owner"),
        (ada.workspace_id, "My workspace", "admin"),
    ]
    assert await _mine(team, ada) == [(ada.workspace_id, "My workspace", "owner")]


async def test_switching_starts_a_session_there_and_ends_the_current_one(team: Team) -> None:
    ada = await team.person("ada@example.com")
    kay = await team.person("kay@example.com")
    await team.add(ada.workspace_id, kay, "member")
    team.auth.clock.advance(timedelta(minutes=30))
    tokens = await team.stub.SwitchWorkspace(
        team_pb2.SwitchWorkspaceRequest(workspace_id=ada.workspace_id),
        metadata=team.as_person(kay.grant),
    )
    grant = await team.auth.validate(tokens.access_token)
    assert (grant.user_id, grant.workspace_id, grant.role) == (
        kay.user_id,
        ada.workspace_id,
        "member",
    )
    # The login carries on: same login time (a switch is no fresh login for recent auth).
    assert grant.authenticated_at == kay.grant.authenticated_at
    assert await refused(team.auth.validate(kay.access_token)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "session_revoked",
    )
    # The new session refreshes like any other.
    refreshed = await team.auth.refresh(tokens.refresh_token)
    assert (await team.auth.validate(refreshed.access_token)).workspace_id == ada.workspace_id
    [event] = await team.events("session.workspace_switched")
    assert event["details"]["from_workspace_id"] == kay.workspace_id


async def test_a_switch_does_not_satisfy_recent_auth(team: Team) -> None:
    kay = await team.person("kay@example.com")
    team.auth.clock.advance(timedelta(hours=1))
    tokens = await team.stub.SwitchWorkspace(
        team_pb2.SwitchWorkspaceRequest(workspace_id=kay.workspace_id),  # the same one
        metadata=team.as_person(kay.grant),
    )
    grant = await team.auth.validate(tokens.access_token)
    assert await refused(
        team.auth.stub.StartTotpEnrollment(
            pb.StartTotpEnrollmentRequest(), metadata=team.auth.as_user(grant)
        )
    ) == (grpc.StatusCode.PERMISSION_DENIED, "recent_auth_required")


async def test_a_workspace_that_is_not_yours_is_not_found(team: Team) -> None:
    ada = await team.person("ada@example.com")
    kay = await team.person("kay@example.com")
    for workspace_id in (ada.workspace_id, "ws_" + "0" * 32, "ws_\x00", ""):
        assert await refused(
            team.stub.SwitchWorkspace(
                team_pb2.SwitchWorkspaceRequest(workspace_id=workspace_id),
                metadata=team.as_person(kay.grant),
            )
        ) == (grpc.StatusCode.NOT_FOUND, "not_found")
    # Nothing ended: the current session still works.
    assert (await team.auth.validate(kay.access_token)).workspace_id == kay.workspace_id


async def test_api_keys_and_services_cannot_switch(team: Team) -> None:
    kay = await team.person("kay@example.com")
    key = team.auth.signing.marker(
        "gateway",
        principal="apikey:key_1",
        workspace_id=kay.workspace_id,
        scopes=("team:read",),
        key_mode="live",
        acting_user_id=kay.user_id,
    )
    for metadata in (key, team.auth.gateway_service()):
        code, _ = await refused(
            team.stub.SwitchWorkspace(
                team_pb2.SwitchWorkspaceRequest(workspace_id=kay.workspace_id), metadata=metadata
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
