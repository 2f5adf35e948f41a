"""Thin gRPC adapter for PasswordResetService: proto <-> passwords/reset.py, nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from palisade.auth.bounded import client_ip
from palisade.auth.passwords.reset import PasswordResets
from palisade.auth.sessions.devices import describe_device
from palisade.auth.sessions.manager import ClientInfo
from palisade.common.caller import Caller, require_caller
from palisade_api.auth.v1 import password_reset_pb2 as pb
from palisade_api.auth.v1 import password_reset_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def _client(caller: Caller) -> ClientInfo:
    # Stored (token rows, events): canonical and bounded to their columns.
    return ClientInfo(ip=client_ip(caller.client_ip), device=describe_device(caller.user_agent))


class PasswordResetServicer(password_reset_pb2_grpc.PasswordResetServiceServicer):
    def __init__(self, *, resets: PasswordResets) -> None:
        self._resets = resets

    async def RequestPasswordReset(
        self, request: pb.RequestPasswordResetRequest, context: Context
    ) -> pb.RequestPasswordResetResponse:
        caller = require_caller()
        await self._resets.request(email=request.email, client=_client(caller))
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
            client=_client(caller),
        )
        if pending is None:
            return pb.ConfirmPasswordResetResponse()
        # No mfa_token: the reset token is what the second call presents (see the proto).
        return pb.ConfirmPasswordResetResponse(mfa_required=True, methods=list(pending.methods))
