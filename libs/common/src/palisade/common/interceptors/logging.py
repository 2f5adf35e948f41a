"""Gives every RPC a request id (the caller's, or a new one) and logs failed calls."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from palisade.common.caller import REQUEST_ID_METADATA_KEY
from palisade.common.interceptors.base import AroundInterceptor, RpcInfo, metadata_value
from palisade.common.logs import request_id_var

log = logging.getLogger("palisade.rpc")
_MAX_REQUEST_ID_LENGTH = 128


def _safe_request_id(value: str | None) -> str:
    # A client-chosen id ends up in logs: accept only short, printable ASCII.
    if value and len(value) <= _MAX_REQUEST_ID_LENGTH and value.isascii() and value.isprintable():
        return value
    return uuid.uuid4().hex


class LoggingInterceptor(AroundInterceptor):
    @asynccontextmanager
    async def around(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        token = request_id_var.set(
            _safe_request_id(metadata_value(context, REQUEST_ID_METADATA_KEY))
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
