"""Thin gRPC adapter for the team (TeamService in team.proto): proto <-> domain, caller checks.

Roles are never taken from the caller assertion: every team operation reads the caller's role
in the database, under the workspace's lock where it changes something.
"""

from __future__ import annotations

from typing import Any

import grpc

from palisade.auth.accounts.principals import signed_in
from palisade.auth.grpc_values import client_info, timestamp, token_response
from palisade.auth.team.invitations import Invitations
from palisade.auth.team.joining import Joining, SignedIn
from palisade.auth.team.membership import TeamMembership
from palisade.auth.team.workspaces import Workspaces
from palisade.common.caller import require_caller
from palisade_api.auth.v1 import auth_pb2, team_pb2, team_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class TeamServicer(team_pb2_grpc.TeamServiceServicer):
    def __init__(
        self,
        *,
        membership: TeamMembership,
        invitations: Invitations,
        joining: Joining,
        workspaces: Workspaces,
    ) -> None:
        self._membership = membership
        self._invitations = invitations
        self._joining = joining
        self._workspaces = workspaces

    async def ChangeMemberRole(
        self, request: team_pb2.ChangeMemberRoleRequest, context: Context
    ) -> auth_pb2.TeamMember:
        caller = require_caller()
        actor_id, workspace_id, _ = signed_in(caller)
        member = await self._membership.change_role(
            actor_id=actor_id,
            workspace_id=workspace_id,
            user_id=request.user_id,
            role=request.role,
            client=client_info(caller),
        )
        return auth_pb2.TeamMember(
            user_id=member.user_id,
            name=member.name,
            email=member.email,
            role=member.role,
            joined_at=timestamp(member.joined_at),
        )

    async def RemoveMember(
        self, request: team_pb2.RemoveMemberRequest, context: Context
    ) -> team_pb2.RemoveMemberResponse:
        caller = require_caller()
        actor_id, workspace_id, _ = signed_in(caller)
        await self._membership.remove(
            actor_id=actor_id,
            workspace_id=workspace_id,
            user_id=request.user_id,
            client=client_info(caller),
        )
        return team_pb2.RemoveMemberResponse()

    async def CreateInvitation(
        self, request: team_pb2.CreateInvitationRequest, context: Context
    ) -> team_pb2.CreateInvitationResponse:
        caller = require_caller()
        actor_id, workspace_id, _ = signed_in(caller)
        created = await self._invitations.create(
            actor_id=actor_id,
            workspace_id=workspace_id,
            email=request.email,
            role=request.role,
            client=client_info(caller),
        )
        return team_pb2.CreateInvitationResponse(
            invitation_id=created.invitation_id, expires_at=timestamp(created.expires_at)
        )

    async def ListInvitations(
        self, request: team_pb2.ListInvitationsRequest, context: Context
    ) -> team_pb2.ListInvitationsResponse:
        actor_id, workspace_id, _ = signed_in(require_caller())
        views, next_token = await self._invitations.list(
            actor_id=actor_id,
            workspace_id=workspace_id,
            page_size_requested=request.page_size,
            page_token=request.page_token,
        )
        return team_pb2.ListInvitationsResponse(
            invitations=[
                team_pb2.Invitation(
                    invitation_id=v.invitation_id,
                    email=v.email,
                    role=v.role,
                    created_by=v.created_by,
                    created_at=timestamp(v.created_at),
                    expires_at=timestamp(v.expires_at),
                    state=v.state,
                )
                for v in views
            ],
            next_page_token=next_token,
        )

    async def RevokeInvitation(
        self, request: team_pb2.RevokeInvitationRequest, context: Context
    ) -> team_pb2.RevokeInvitationResponse:
        caller = require_caller()
        actor_id, workspace_id, _ = signed_in(caller)
        await self._invitations.revoke(
            actor_id=actor_id,
            workspace_id=workspace_id,
            invitation_id=request.invitation_id,
            client=client_info(caller),
        )
        return team_pb2.RevokeInvitationResponse()

    async def AcceptInvitation(
        self, request: team_pb2.AcceptInvitationRequest, context: Context
    ) -> auth_pb2.TokenResponse:
        caller = require_caller()
        person = None
        if caller.principal != "anonymous":
            # A bearer came with the request (the gateway validated it): a person, never a
            # key or a service (signed_in refuses those).
            user_id, _, session_id = signed_in(caller)
            person = SignedIn(user_id, session_id)
        issued = await self._joining.accept(
            token=request.token,
            name=request.name,
            password=request.password,
            signed_in=person,
            client=client_info(caller),
        )
        return token_response(issued)

    async def ListMyWorkspaces(
        self, request: team_pb2.ListMyWorkspacesRequest, context: Context
    ) -> team_pb2.ListMyWorkspacesResponse:
        user_id, _, _ = signed_in(require_caller())
        return team_pb2.ListMyWorkspacesResponse(
            workspaces=[
                team_pb2.Workspace(workspace_id=w.workspace_id, name=w.name, role=w.role)
                for w in await self._workspaces.of(user_id)
            ]
        )

    async def SwitchWorkspace(
        self, request: team_pb2.SwitchWorkspaceRequest, context: Context
    ) -> auth_pb2.TokenResponse:
        caller = require_caller()
        user_id, _, session_id = signed_in(caller)
        issued = await self._workspaces.switch(
            user_id=user_id,
            session_id=session_id,
            workspace_id=request.workspace_id,
            client=client_info(caller),
        )
        return token_response(issued)
