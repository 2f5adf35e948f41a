"""Thin gRPC adapter for PasswordResetService: proto <-> passwords/reset.py, nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from palisade.auth.grpc_values import client_info
from palisade.auth.passwords.reset import PasswordResets
from palisade.common.caller import require_caller
from palisade_api.auth.v1 import password_reset_pb2 as pb
from palisade_api.auth.v1 import password_reset_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class PasswordResetServicer(password_reset_pb2_grpc.PasswordResetServiceServicer):
    def __init__(self, *, resets: PasswordResets) -> None:
        self._resets = resets

    async def RequestPasswordReset(
        self, request: pb.RequestPasswordResetRequest, context: Context
    ) -> pb.RequestPasswordResetResponse:
        caller = require_caller()
        await self._resets.request(email=request.email, client=client_info(caller))
        return pb.RequestPasswordResetResponse()

    async def ConfirmPasswordReset(
        self, request: pb.ConfirmPasswordResetRequest, context: Context
    ) -> pb.ConfirmPasswordResetResponse:
        caller = require_caller()
        pending = await self._resets.confirm(
            token=request.token,
            new_password=request.new_password,
            code=request.code,
            backup_code=request.backup_code,
            client=client_info(caller),
        )
        if pending is None:
            return pb.ConfirmPasswordResetResponse()
        # No mfa_token: the reset token is what the second call presents (see the proto).
        return pb.ConfirmPasswordResetResponse(mfa_required=True, methods=list(pending.methods))
