"""A running crypto + auth pair (on the backend under test) with an SMTP catcher, and the
gateway's side of TeamService: people signed up, logged in, placed in workspaces."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import pytest
from smtp_catcher import SmtpCatcher, serve_smtp_catcher
from sqlalchemy import insert, select, update

from palisade.auth.store import memberships, outbox, users
from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import team_pb2, team_pb2_grpc

PASSWORD = "correct horse battery staple"
INVITE_SUBJECT = "You're invited to a Palisade workspace"
_TOKEN = re.compile(r"token=(plsd_inv_[A-Za-z0-9_%-]+)")


async def refused(call: Any) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    trailers = dict(caught.value.trailing_metadata() or ())
    return caught.value.code(), trailers.get("palisade-error-code")


@dataclass
class Person:
    email: str
    user_id: str
    workspace_id: str  # the one sign-up made
    grant: pb.ValidateAccessTokenResponse  # a session in `workspace_id`
    access_token: str


class Team:
    def __init__(self, auth: Any, mail: SmtpCatcher, stub: team_pb2_grpc.TeamServiceStub):
        self.auth = auth
        self.mail = mail
        self.stub = stub
        self.engine = auth.servers[0].engine

    async def person(self, email: str, *, verified: bool = True, name: str = "Ada") -> Person:
        signed_up = await self.auth.stub.SignUp(
            pb.SignUpRequest(email=email, password=PASSWORD, name=name),
            metadata=self.auth.anonymous(),
        )
        if verified:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(users)
                    .where(users.c.id == signed_up.user_id)
                    .values(email_verified_at=self.auth.clock.now())
                )
        return await self.session_of(email, signed_up.user_id, signed_up.workspace_id)

    async def session_of(self, email: str, user_id: str, workspace_id: str) -> Person:
        tokens = await self.auth.login(email)
        grant = await self.auth.validate(tokens.access_token)
        return Person(email, user_id, workspace_id, grant, tokens.access_token)

    async def add(self, workspace_id: str, person: Person, role: str, *, later: int = 1) -> None:
        """Makes `person` a member (directly in the database: role tests need no invitation)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(memberships).values(
                    workspace_id=workspace_id,
                    user_id=person.user_id,
                    role=role,
                    created_at=self.auth.clock.now() + timedelta(seconds=later),
                )
            )

    async def move(self, person: Person, workspace_id: str) -> Person:
        """`person` with a new session in `workspace_id` (POST /v1/me/workspace); the access
        token of the old one (in their own workspace) stays theirs in .home_token."""
        fresh = await self.session_of(person.email, person.user_id, person.workspace_id)
        tokens = await self.stub.SwitchWorkspace(
            team_pb2.SwitchWorkspaceRequest(workspace_id=workspace_id),
            metadata=self.as_person(fresh.grant),
        )
        grant = await self.auth.validate(tokens.access_token)
        return Person(person.email, person.user_id, person.workspace_id, grant, tokens.access_token)

    async def events(self, event_type: str) -> list[dict[str, Any]]:
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                select(outbox.c.payload).where(outbox.c.event_type == event_type)
            )
            return [p if isinstance(p, dict) else json.loads(p) for (p,) in rows]

    async def role(self, workspace_id: str, user_id: str) -> str | None:
        async with self.engine.begin() as conn:
            return (
                await conn.execute(
                    select(memberships.c.role).where(
                        memberships.c.workspace_id == workspace_id,
                        memberships.c.user_id == user_id,
                    )
                )
            ).scalar_one_or_none()

    def as_person(self, grant: pb.ValidateAccessTokenResponse, *, role: str = "owner") -> Any:
        """The gateway's assertion for this session (the role claim is what the gateway cached,
        which auth must not trust: tests pass a stale one on purpose)."""
        return self.auth.signing.marker(
            "gateway",
            principal=f"user:{grant.user_id}",
            workspace_id=grant.workspace_id,
            session_id=grant.session_id,
            client_ip="203.0.113.7",
            user_agent="pytest",
            role=role,
        )

    async def change_role(self, actor: Person, user_id: str, role: str) -> pb.TeamMember:
        return await self.stub.ChangeMemberRole(
            team_pb2.ChangeMemberRoleRequest(user_id=user_id, role=role),
            metadata=self.as_person(actor.grant),
        )

    async def remove(self, actor: Person, user_id: str) -> None:
        await self.stub.RemoveMember(
            team_pb2.RemoveMemberRequest(user_id=user_id), metadata=self.as_person(actor.grant)
        )

    async def invite(self, actor: Person, email: str, role: str = "member") -> Any:
        return await self.stub.CreateInvitation(
            team_pb2.CreateInvitationRequest(email=email, role=role),
            metadata=self.as_person(actor.grant),
        )

    async def invitation_token(self, email: str, nth: int = 1) -> str:
        """The token in the nth invitation email to `email`, once the relay delivered it."""
        async with asyncio.timeout(10):
            while True:
                found = [m for m in self.mail.to(email) if m["Subject"] == INVITE_SUBJECT]
                if len(found) >= nth:
                    body = found[nth - 1].get_body(preferencelist=("plain",))
                    match = _TOKEN.search(str(body.get_content()))
                    assert match is not None
                    return match.group(1)
                self.mail.arrived.clear()
                await self.mail.arrived.wait()

    async def accept(
        self, token: str, *, name: str = "", password: str = "", person: Person | None = None
    ) -> pb.TokenResponse:
        metadata = (
            self.as_person(person.grant, role="member")
            if person is not None
            else self.auth.anonymous()
        )
        return await self.stub.AcceptInvitation(
            team_pb2.AcceptInvitationRequest(token=token, name=name, password=password),
            metadata=metadata,
        )


@asynccontextmanager
async def running_team(
    auth_factory: Any, database_url: str, **overrides: Any
) -> AsyncIterator[Team]:
    async with (
        serve_smtp_catcher() as (catcher, port),
        auth_factory(
            database_url=database_url,
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_security="none",
            **overrides,
        ) as auth,
        auth.signing.channel(auth.servers[0].running.target) as channel,
    ):
        yield Team(auth, catcher, team_pb2_grpc.TeamServiceStub(channel))
