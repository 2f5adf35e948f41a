"""Thin gRPC adapter for the auth service: proto <-> domain, caller checks, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.auth.accounts import Accounts
from palisade.auth.devices import describe_device
from palisade.auth.errors import NotSignedIn
from palisade.auth.geo import Locator
from palisade.auth.revocation import RevocationFeed
from palisade.auth.sessions import ClientInfo, IssuedTokens, SessionManager
from palisade.common.caller import Caller, require_caller, require_service_caller
from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import auth_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
USER_PREFIX = "user:"


def _client(caller: Caller) -> ClientInfo:
    return ClientInfo(ip=caller.client_ip, device=describe_device(caller.user_agent))


def _signed_in(caller: Caller) -> tuple[str, str, str | None]:
    """(user id, workspace id, session id) of a signed-in user, or NotSignedIn."""
    if not caller.principal.startswith(USER_PREFIX) or not caller.workspace_id:
        raise NotSignedIn()
    return caller.principal[len(USER_PREFIX) :], caller.workspace_id, caller.session_id


def _timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


def _tokens(issued: IssuedTokens) -> pb.TokenResponse:
    return pb.TokenResponse(
        access_token=issued.access_token,
        refresh_token=issued.refresh_token,
        expires_in=issued.expires_in,
        token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        *,
        accounts: Accounts,
        sessions: SessionManager,
        revocations: RevocationFeed,
        locator: Locator,
    ) -> None:
        self._accounts = accounts
        self._sessions = sessions
        self._revocations = revocations
        self._locator = locator

    async def SignUp(self, request: pb.SignUpRequest, context: Context) -> pb.SignUpResponse:
        caller = require_caller()
        result = await self._accounts.sign_up(
            email=request.email,
            password=request.password,
            name=request.name,
            workspace_name=request.workspace_name,
            client=_client(caller),
        )
        return pb.SignUpResponse(user_id=result.user_id, workspace_id=result.workspace_id)

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.TokenResponse:
        caller = require_caller()
        issued = await self._accounts.login(
            email=request.email,
            password=request.password,
            remember_me=request.remember_me,
            client=_client(caller),
        )
        return _tokens(issued)

    async def Refresh(self, request: pb.RefreshRequest, context: Context) -> pb.TokenResponse:
        caller = require_caller()
        return _tokens(await self._sessions.refresh(request.refresh_token, _client(caller)))

    async def Logout(self, request: pb.LogoutRequest, context: Context) -> pb.LogoutResponse:
        caller = require_caller()
        user_id, _, session_id = _signed_in(caller)
        if session_id:
            await self._sessions.revoke(
                user_id=user_id,
                session_ids=[session_id],
                keep=None,
                reason="logout",
                actor=caller.principal,
                client=_client(caller),
                event_type="session.logout",
            )
        return pb.LogoutResponse()

    async def GetMe(self, request: pb.GetMeRequest, context: Context) -> pb.Me:
        user_id, workspace_id, _ = _signed_in(require_caller())
        profile = await self._accounts.profile(user_id=user_id, workspace_id=workspace_id)
        return pb.Me(
            user_id=profile.user_id,
            email=profile.email,
            name=profile.name,
            workspace_id=profile.workspace_id,
            role=profile.role,
            mfa=pb.MfaStatus(totp=False, passkeys=0),
        )

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        user_id, _, current = _signed_in(require_caller())
        rows = await self._sessions.list(user_id)
        return pb.ListSessionsResponse(
            sessions=[
                pb.Session(
                    id=row.id,
                    current=row.id == current,
                    device=row.device or "",
                    ip=row.ip or "",
                    location=self._locator.locate(row.ip),
                    created_at=_timestamp(row.created_at),
                    last_seen_at=_timestamp(row.last_seen_at),
                )
                for row in rows
            ]
        )

    async def RevokeSession(
        self, request: pb.RevokeSessionRequest, context: Context
    ) -> pb.RevokeSessionResponse:
        caller = require_caller()
        user_id, _, _ = _signed_in(caller)
        await self._sessions.revoke(
            user_id=user_id,
            session_ids=[request.id],
            keep=None,
            reason="revoked_by_user",
            actor=caller.principal,
            client=_client(caller),
            event_type="session.revoked",
        )
        return pb.RevokeSessionResponse()

    async def RevokeAllSessions(
        self, request: pb.RevokeAllSessionsRequest, context: Context
    ) -> pb.RevokeAllSessionsResponse:
        caller = require_caller()
        user_id, _, current = _signed_in(caller)
        await self._sessions.revoke(
            user_id=user_id,
            session_ids=None,
            keep=current if request.keep_current else None,
            reason="revoked_all_by_user",
            actor=caller.principal,
            client=_client(caller),
            event_type="session.revoked",
        )
        return pb.RevokeAllSessionsResponse()

    async def ChangePassword(
        self, request: pb.ChangePasswordRequest, context: Context
    ) -> pb.ChangePasswordResponse:
        caller = require_caller()
        user_id, _, session_id = _signed_in(caller)
        await self._accounts.change_password(
            user_id=user_id,
            session_id=session_id,
            current=request.current_password,
            new=request.new_password,
            client=_client(caller),
        )
        return pb.ChangePasswordResponse()

    async def ValidateAccessToken(
        self, request: pb.ValidateAccessTokenRequest, context: Context
    ) -> pb.ValidateAccessTokenResponse:
        require_service_caller()
        grant = await self._sessions.validate(request.access_token)
        return pb.ValidateAccessTokenResponse(
            user_id=grant.user_id,
            workspace_id=grant.workspace_id,
            role=grant.role,
            session_id=grant.session_id,
            expires_at=_timestamp(grant.expires_at),
        )

    async def WatchRevocations(
        self, request: pb.WatchRevocationsRequest, context: Context
    ) -> AsyncIterator[pb.Revocation]:
        require_service_caller()
        async with self._revocations.subscribe() as notices:
            # Tells the subscriber it will miss nothing from here on.
            await context.send_initial_metadata((("x-palisade-subscribed", "1"),))
            async for notice in notices:
                yield pb.Revocation(
                    access_token_hashes=list(notice.access_token_hashes),
                    session_ids=list(notice.session_ids),
                    user_id=notice.user_id,
                    reason=notice.reason,
                    revoked_at=_timestamp(notice.revoked_at),
                )
