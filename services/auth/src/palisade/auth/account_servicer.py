"""Thin gRPC adapter for AccountService (account.proto): email verification, email change, and
"this wasn't me" reports from new-sign-in alerts."""

from __future__ import annotations

from typing import Any

import grpc

from palisade.auth.accounts.email_change import EmailChanges
from palisade.auth.accounts.not_me import NotMeReports
from palisade.auth.accounts.principals import signed_in
from palisade.auth.accounts.verification import EmailVerifications
from palisade.auth.grpc_values import client_info
from palisade.auth.sessions.recent_auth import RecentAuth
from palisade.common.caller import require_caller
from palisade_api.auth.v1 import account_pb2 as pb
from palisade_api.auth.v1 import account_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AccountService"].full_name


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(
        self,
        *,
        verifications: EmailVerifications,
        changes: EmailChanges,
        recent_auth: RecentAuth,
        not_me: NotMeReports,
    ) -> None:
        self._verifications = verifications
        self._changes = changes
        self._recent_auth = recent_auth
        self._not_me = not_me

    async def ConfirmEmailVerification(
        self, request: pb.ConfirmEmailVerificationRequest, context: Context
    ) -> pb.ConfirmEmailVerificationResponse:
        caller = require_caller()
        await self._verifications.confirm(token=request.token, client=client_info(caller))
        return pb.ConfirmEmailVerificationResponse()

    async def ConfirmNotMe(
        self, request: pb.ConfirmNotMeRequest, context: Context
    ) -> pb.ConfirmNotMeResponse:
        caller = require_caller()
        await self._not_me.confirm(token=request.token, client=client_info(caller))
        return pb.ConfirmNotMeResponse()

    async def ResendEmailVerification(
        self, request: pb.ResendEmailVerificationRequest, context: Context
    ) -> pb.ResendEmailVerificationResponse:
        caller = require_caller()
        user_id, _, _ = signed_in(caller)
        await self._verifications.resend(user_id=user_id, client=client_info(caller))
        return pb.ResendEmailVerificationResponse()

    async def RequestEmailChange(
        self, request: pb.RequestEmailChangeRequest, context: Context
    ) -> pb.RequestEmailChangeResponse:
        caller = require_caller()
        user_id, _, session_id = signed_in(caller)
        client = client_info(caller)
        await self._recent_auth.require(
            user_id=user_id, session_id=session_id, client=client, action="RequestEmailChange"
        )
        await self._changes.request(
            user_id=user_id, new_email=request.new_email, client=client, session_id=session_id
        )
        return pb.RequestEmailChangeResponse()
