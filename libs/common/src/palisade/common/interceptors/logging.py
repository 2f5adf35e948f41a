"""Gives every RPC a request id (the caller's, or a new one) and logs failed calls."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

import grpc

from palisade.common.caller import REQUEST_ID_METADATA_KEY
from palisade.common.interceptors.base import (
    AroundInterceptor,
    CallScope,
    RpcInfo,
    metadata_value,
)
from palisade.common.logs import request_id_var, safe_request_id

log = logging.getLogger("palisade.rpc")


class LoggingInterceptor(AroundInterceptor):
    def around(self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]) -> _Logged:
        return _Logged(info, context)


class _Logged(CallScope):
    __slots__ = ("_start", "_token")

    async def __aenter__(self) -> None:
        self._token = request_id_var.set(
            safe_request_id(metadata_value(self.context, REQUEST_ID_METADATA_KEY))
        )
        self._start = time.perf_counter()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        try:
            if kind is not None:
                code = self.context.code()
                log.info(
                    "rpc failed",
                    extra={
                        "rpc": self.info.full_method,
                        "code": code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN",
                        "duration_ms": round((time.perf_counter() - self._start) * 1000, 3),
                    },
                )
        finally:
            request_id_var.reset(self._token)
        return False
