"""Thin gRPC adapter for the auth service: proto <-> domain, caller checks, nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from palisade.auth.accounts.deletion import AccountDeletion
from palisade.auth.accounts.principals import require_service, signed_in, workspace_reader
from palisade.auth.accounts.service import Accounts
from palisade.auth.grpc_values import client_info, timestamp, token_response
from palisade.auth.links.magic import MagicLinks
from palisade.auth.mail.notices import NoticeRequest, SecurityNotices
from palisade.auth.mfa.login import MfaLogins
from palisade.auth.mfa.second_factor import SecondFactors
from palisade.auth.passkeys.management import PasskeyInfo
from palisade.auth.passkeys.service import Passkeys
from palisade.auth.sessions.geo import Locator
from palisade.auth.sessions.manager import SessionManager
from palisade.auth.sessions.recent_auth import RecentAuth
from palisade.auth.sessions.revocation import FeedEvent, RevocationFeed
from palisade.auth.team.directory import TeamDirectory
from palisade.common.caller import Caller, require_caller
from palisade.common.revocation_feed import serve_subscription
from palisade_api.auth.v1 import auth_pb2 as pb
from palisade_api.auth.v1 import auth_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
# Services that may have auth email security notices (SendNotice); the gateway alone
# validates tokens and follows revocations.
NOTICE_CALLERS = frozenset({"service:apikeys", "service:webhooks"})
GATEWAY_CALLERS = frozenset({"service:gateway"})
TEAM_READ_SCOPE = "team:read"


def _signed_in(caller: Caller) -> tuple[str, str, str | None]:
    """(user id, workspace id, session id) of a signed-in person: API keys and services are
    refused (PeopleOnly), anyone else is NotSignedIn."""
    return signed_in(caller)


def _struct(value: dict[str, Any]) -> Struct:
    struct = Struct()
    struct.update(value)
    return struct


def _options(challenge_id: str, public_key: dict[str, Any]) -> pb.PasskeyOptions:
    return pb.PasskeyOptions(challenge_id=challenge_id, public_key=_struct(public_key))


def _json(struct: Struct) -> dict[str, Any] | None:
    """A WebAuthn JSON object as the client sent it (numbers stay numbers, not floats).

    None where a Struct cannot be JSON (a NaN or an infinity sent over gRPC): the ceremony
    refuses it as a malformed response (400) and records that, like any other."""
    try:
        return MessageToDict(struct)
    except (ValueError, RecursionError):
        return None


def _passkey(info: PasskeyInfo) -> pb.Passkey:
    passkey = pb.Passkey(
        id=info.id, name=info.name, created_at=timestamp(info.created_at), backed_up=info.backed_up
    )
    if info.last_used_at is not None:
        passkey.last_used_at.CopyFrom(timestamp(info.last_used_at))
    return passkey


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        *,
        accounts: Accounts,
        sessions: SessionManager,
        revocations: RevocationFeed,
        locator: Locator,
        factors: SecondFactors,
        mfa: MfaLogins,
        magic_links: MagicLinks,
        passkeys: Passkeys,
        recent_auth: RecentAuth,
        team: TeamDirectory,
        notices: SecurityNotices,
        deletion: AccountDeletion,
    ) -> None:
        self._deletion = deletion
        self._team = team
        self._notices = notices
        self._accounts = accounts
        self._factors = factors
        self._mfa = mfa
        self._magic_links = magic_links
        self._passkeys = passkeys
        self._recent_auth = recent_auth
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
            client=client_info(caller),
        )
        return pb.SignUpResponse(user_id=result.user_id, workspace_id=result.workspace_id)

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.TokenResponse:
        caller = require_caller()
        issued = await self._accounts.login(
            email=request.email,
            password=request.password,
            remember_me=request.remember_me,
            client=client_info(caller),
        )
        return token_response(issued)

    async def Refresh(self, request: pb.RefreshRequest, context: Context) -> pb.TokenResponse:
        caller = require_caller()
        return token_response(
            await self._sessions.refresh(request.refresh_token, client_info(caller))
        )

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
                client=client_info(caller),
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
            mfa=pb.MfaStatus(totp=profile.totp_enabled, passkeys=profile.passkeys),
            email_verified=profile.email_verified,
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
                    created_at=timestamp(row.created_at),
                    last_seen_at=timestamp(row.last_seen_at),
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
            client=client_info(caller),
            event_type="session.revoked",
        )
        return pb.RevokeSessionResponse()

    async def RevokeAllSessions(
        self, request: pb.RevokeAllSessionsRequest, context: Context
    ) -> pb.RevokeAllSessionsResponse:
        caller = require_caller()
        user_id, _, current = _signed_in(caller)
        # First: a change link asked for from a session about to end must not outlive it.
        await self._accounts.end_pending_email_changes(user_id)
        await self._sessions.revoke(
            user_id=user_id,
            session_ids=None,
            keep=current if request.keep_current else None,
            reason="revoked_all_by_user",
            actor=caller.principal,
            client=client_info(caller),
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
            client=client_info(caller),
        )
        return pb.ChangePasswordResponse()

    async def DeleteAccount(
        self, request: pb.DeleteAccountRequest, context: Context
    ) -> pb.DeleteAccountResponse:
        caller = require_caller()
        user_id, _, session_id = _signed_in(caller)
        # The recent-auth check is the deletion's own (after it looked whether the account
        # is gone already: a repeated DELETE answers as the first did).
        await self._deletion.delete(
            user_id=user_id, session_id=session_id, client=client_info(caller)
        )
        return pb.DeleteAccountResponse()

    async def _require_recent_auth(self, caller: Caller, action: str) -> None:
        user_id, _, session_id = _signed_in(caller)
        await self._recent_auth.require(
            user_id=user_id, session_id=session_id, client=client_info(caller), action=action
        )

    # -- second factor, magic links, passkeys (public) ----------------------------------------

    async def LoginMfa(self, request: pb.LoginMfaRequest, context: Context) -> pb.TokenResponse:
        caller = require_caller()
        issued = await self._mfa.complete(
            mfa_token=request.mfa_token,
            code=request.code,
            backup_code=request.backup_code,
            client=client_info(caller),
        )
        return token_response(issued)

    async def RequestMagicLink(
        self, request: pb.RequestMagicLinkRequest, context: Context
    ) -> pb.RequestMagicLinkResponse:
        caller = require_caller()
        await self._magic_links.request(
            email=request.email, client=client_info(caller), code_challenge=request.code_challenge
        )
        return pb.RequestMagicLinkResponse()

    async def RedeemMagicLink(
        self, request: pb.RedeemMagicLinkRequest, context: Context
    ) -> pb.TokenResponse:
        caller = require_caller()
        issued = await self._magic_links.redeem(
            token=request.token, client=client_info(caller), code_verifier=request.code_verifier
        )
        return token_response(issued)

    async def PasskeyLoginOptions(
        self, request: pb.PasskeyLoginOptionsRequest, context: Context
    ) -> pb.PasskeyOptions:
        caller = require_caller()
        challenge_id, options = await self._passkeys.login_options(
            email=request.email or None, client=client_info(caller)
        )
        return _options(challenge_id, options)

    async def PasskeyLogin(
        self, request: pb.PasskeyLoginRequest, context: Context
    ) -> pb.TokenResponse:
        caller = require_caller()
        issued = await self._passkeys.login(
            challenge_id=request.challenge_id,
            credential=_json(request.credential),
            client=client_info(caller),
        )
        return token_response(issued)

    # -- the caller's own sign-in methods -----------------------------------------------------

    async def StartTotpEnrollment(
        self, request: pb.StartTotpEnrollmentRequest, context: Context
    ) -> pb.TotpEnrollment:
        caller = require_caller()
        user_id, _, _ = _signed_in(caller)
        await self._require_recent_auth(caller, "StartTotpEnrollment")
        enrollment = await self._factors.start_totp(user_id=user_id, client=client_info(caller))
        return pb.TotpEnrollment(secret=enrollment.secret, otpauth_uri=enrollment.otpauth_uri)

    async def ConfirmTotp(self, request: pb.ConfirmTotpRequest, context: Context) -> pb.BackupCodes:
        caller = require_caller()
        user_id, _, _ = _signed_in(caller)
        codes = await self._factors.confirm_totp(
            user_id=user_id, code=request.code, client=client_info(caller)
        )
        return pb.BackupCodes(backup_codes=codes)

    async def DisableTotp(
        self, request: pb.DisableTotpRequest, context: Context
    ) -> pb.DisableTotpResponse:
        caller = require_caller()
        user_id, _, _ = _signed_in(caller)
        await self._require_recent_auth(caller, "DisableTotp")
        await self._factors.disable_totp(user_id=user_id, client=client_info(caller))
        return pb.DisableTotpResponse()

    async def RegenerateBackupCodes(
        self, request: pb.RegenerateBackupCodesRequest, context: Context
    ) -> pb.BackupCodes:
        caller = require_caller()
        user_id, _, _ = _signed_in(caller)
        await self._require_recent_auth(caller, "RegenerateBackupCodes")
        codes = await self._factors.regenerate_backup_codes(
            user_id=user_id, client=client_info(caller)
        )
        return pb.BackupCodes(backup_codes=codes)

    async def PasskeyRegistrationOptions(
        self, request: pb.PasskeyRegistrationOptionsRequest, context: Context
    ) -> pb.PasskeyOptions:
        caller = require_caller()
        user_id, _, _ = _signed_in(caller)
        await self._require_recent_auth(caller, "PasskeyRegistrationOptions")
        challenge_id, options = await self._passkeys.registration_options(
            user_id=user_id, client=client_info(caller)
        )
        return _options(challenge_id, options)

    async def RegisterPasskey(
        self, request: pb.RegisterPasskeyRequest, context: Context
    ) -> pb.RegisterPasskeyResponse:
        caller = require_caller()
        user_id, _, _ = _signed_in(caller)
        passkey_id = await self._passkeys.register(
            user_id=user_id,
            challenge_id=request.challenge_id,
            credential=_json(request.credential),
            name=request.name,
            client=client_info(caller),
        )
        return pb.RegisterPasskeyResponse(passkey_id=passkey_id)

    async def ListPasskeys(
        self, request: pb.ListPasskeysRequest, context: Context
    ) -> pb.ListPasskeysResponse:
        user_id, _, _ = _signed_in(require_caller())
        return pb.ListPasskeysResponse(
            passkeys=[_passkey(info) for info in await self._passkeys.list(user_id)]
        )

    async def GetPasskey(self, request: pb.GetPasskeyRequest, context: Context) -> pb.Passkey:
        user_id, _, _ = _signed_in(require_caller())
        return _passkey(await self._passkeys.get(user_id, request.id))

    async def RenamePasskey(self, request: pb.RenamePasskeyRequest, context: Context) -> pb.Passkey:
        caller = require_caller()
        user_id, _, _ = _signed_in(caller)
        info = await self._passkeys.rename(
            user_id=user_id, passkey_id=request.id, name=request.name, client=client_info(caller)
        )
        return _passkey(info)

    async def DeletePasskey(
        self, request: pb.DeletePasskeyRequest, context: Context
    ) -> pb.DeletePasskeyResponse:
        caller = require_caller()
        user_id, _, _ = _signed_in(caller)
        await self._require_recent_auth(caller, "DeletePasskey")
        await self._passkeys.delete(
            user_id=user_id, passkey_id=request.id, client=client_info(caller)
        )
        return pb.DeletePasskeyResponse()

    # -- team ---------------------------------------------------------------------------------

    async def ListTeamMembers(
        self, request: pb.ListTeamMembersRequest, context: Context
    ) -> pb.ListTeamMembersResponse:
        reader = workspace_reader(require_caller(), TEAM_READ_SCOPE)
        members, next_token = await self._team.members(
            reader, page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListTeamMembersResponse(
            members=[
                pb.TeamMember(
                    user_id=m.user_id,
                    name=m.name,
                    email=m.email,
                    role=m.role,
                    joined_at=timestamp(m.joined_at),
                )
                for m in members
            ],
            next_page_token=next_token,
        )

    # -- for other services -------------------------------------------------------------------

    async def SendNotice(
        self, request: pb.SendNoticeRequest, context: Context
    ) -> pb.SendNoticeResponse:
        caller = require_service(NOTICE_CALLERS)
        recipients = await self._notices.send(
            caller=caller.principal,
            request=NoticeRequest(
                kind=request.kind,
                idempotency_key=request.idempotency_key,
                user_id=request.user_id,
                workspace_id=request.workspace_id,
                roles=tuple(request.roles),
                details=dict(request.details),
                ip=request.ip,
                user_agent=request.user_agent,
                occurred_at=(
                    request.occurred_at.ToDatetime(tzinfo=UTC)
                    if request.HasField("occurred_at")
                    else None
                ),
            ),
        )
        return pb.SendNoticeResponse(recipients=recipients)

    async def ValidateAccessToken(
        self, request: pb.ValidateAccessTokenRequest, context: Context
    ) -> pb.ValidateAccessTokenResponse:
        require_service(GATEWAY_CALLERS)
        grant = await self._sessions.validate(request.access_token)
        return pb.ValidateAccessTokenResponse(
            user_id=grant.user_id,
            workspace_id=grant.workspace_id,
            role=grant.role,
            session_id=grant.session_id,
            expires_at=timestamp(grant.expires_at),
            authenticated_at=timestamp(grant.authenticated_at),
            restrictions=list(grant.restrictions),
        )

    async def WatchRevocations(
        self, request: pb.WatchRevocationsRequest, context: Context
    ) -> AsyncIterator[pb.Revocation]:
        require_service(GATEWAY_CALLERS)
        async for message in serve_subscription(
            self._revocations.subscribe(), context, _revocation_message
        ):
            yield message


def _revocation_message(event: FeedEvent) -> pb.Revocation:
    notice = event.notice
    if notice is None:
        return pb.Revocation(sequence=event.sequence, heartbeat=True)
    return pb.Revocation(
        access_token_hashes=list(notice.access_token_hashes),
        session_ids=list(notice.session_ids),
        user_id=notice.user_id,
        reason=notice.reason,
        revoked_at=timestamp(notice.revoked_at),
        sequence=event.sequence,
    )
