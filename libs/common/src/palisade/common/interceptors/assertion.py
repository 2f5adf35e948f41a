"""Verifies the signed caller assertion on every RPC except health and reflection.

The assertion must have been signed for the very method invoked (its `mth` claim), so one
captured for a harmless call cannot be spent on another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from palisade.common.caller import CALLER_METADATA_KEY, AssertionVerifier, current_caller
from palisade.common.interceptors.base import AroundInterceptor, RpcInfo, metadata_value
from palisade.common.logs import request_id_var


class CallerAssertionInterceptor(AroundInterceptor):
    """Innermost: verifies the caller, and only then lets a request body be looked at."""

    validates_requests = True

    def __init__(self, verifier: AssertionVerifier) -> None:
        self._verifier = verifier

    @asynccontextmanager
    async def around(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        if info.exempt_from_assertion:
            yield
            return
        caller = self._verifier.verify(
            metadata_value(context, CALLER_METADATA_KEY), method=info.full_method
        )
        caller_token = current_caller.set(caller)
        # From here on the signed request id is the one logged, not the unsigned header's. It
        # is not reset here: the logging interceptor (outermost) resets it when the RPC ends,
        # after it has logged the outcome under the verified id.
        request_id_var.set(caller.request_id)
        try:
            yield
        finally:
            current_caller.reset(caller_token)
