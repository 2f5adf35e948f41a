"""Verifies the signed caller assertion on every RPC except health and reflection.

The assertion must have been signed for the very method invoked (its `mth` claim), so one
captured for a harmless call cannot be spent on another.
"""

from __future__ import annotations

from contextvars import Token
from types import TracebackType
from typing import Any

import grpc

from palisade.common.caller import CALLER_METADATA_KEY, AssertionVerifier, Caller, current_caller
from palisade.common.interceptors.base import (
    AroundInterceptor,
    CallScope,
    RpcInfo,
    metadata_value,
)
from palisade.common.logs import request_id_var


class CallerAssertionInterceptor(AroundInterceptor):
    """Innermost: verifies the caller, and only then lets a request body be looked at."""

    validates_requests = True

    def __init__(self, verifier: AssertionVerifier) -> None:
        self._verifier = verifier

    def around(self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]) -> _Verified:
        return _Verified(self._verifier, info, context)


class _Verified(CallScope):
    __slots__ = ("_token", "_verifier")

    def __init__(
        self,
        verifier: AssertionVerifier,
        info: RpcInfo,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        super().__init__(info, context)
        self._verifier = verifier
        self._token: Token[Caller | None] | None = None

    async def __aenter__(self) -> None:
        if self.info.exempt_from_assertion:
            return
        caller = self._verifier.verify(
            metadata_value(self.context, CALLER_METADATA_KEY), method=self.info.full_method
        )
        self._token = current_caller.set(caller)
        # From here on the signed request id is the one logged, not the unsigned header's. It
        # is not reset here: the logging interceptor (outermost) resets it when the RPC ends,
        # after it has logged the outcome under the verified id.
        request_id_var.set(caller.request_id)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if self._token is not None:
            current_caller.reset(self._token)
        return False
