"""Gives every RPC a request id (the caller's, or a new one) and logs failed calls."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from palisade.common.caller import REQUEST_ID_METADATA_KEY
from palisade.common.interceptors.base import AroundInterceptor, RpcInfo, metadata_value
from palisade.common.logs import request_id_var, safe_request_id

log = logging.getLogger("palisade.rpc")


class LoggingInterceptor(AroundInterceptor):
    @asynccontextmanager
    async def around(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        token = request_id_var.set(
            safe_request_id(metadata_value(context, REQUEST_ID_METADATA_KEY))
        )
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            code = context.code()
            log.info(
                "rpc failed",
                extra={
                    "rpc": info.full_method,
                    "code": code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN",
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                },
            )
            raise
        finally:
            request_id_var.reset(token)
