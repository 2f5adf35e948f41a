"""Maps domain exceptions to gRPC statuses with safe messages and a stable machine code."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import grpc

from palisade.common.db import database_unavailable, transaction_conflict
from palisade.common.errors import ERROR_CODE_METADATA_KEY, PalisadeError
from palisade.common.interceptors.base import AroundInterceptor, CallScope, RpcInfo

log = logging.getLogger("palisade.rpc")


class ErrorMappingInterceptor(AroundInterceptor):
    def around(self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]) -> _Mapped:
        return _Mapped(info, context)


class _Mapped(CallScope):
    # The abort raised from __aexit__ replaces the error in flight.
    __slots__ = ()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if error is None or not isinstance(error, Exception):
            return False  # success, or cancellation and the like: not ours to map
        if isinstance(error, grpc.aio.AbortError):
            return False
        context = self.context
        if isinstance(error, PalisadeError):
            await context.abort(
                error.status,
                error.message,
                trailing_metadata=(
                    (ERROR_CODE_METADATA_KEY, error.code),
                    *error.trailing_metadata(),
                ),
            )
        elif transaction_conflict(error):
            # Lost a lock cycle or a serialisation race: rolled back, nothing written, so the
            # caller may send the same request again (ABORTED, code transaction_conflict;
            # 409 at the gateway). Not an outage: no 503.
            log.warning(
                "transaction conflict",
                extra={
                    "rpc": self.info.full_method,
                    "error": type(error.__cause__ or error).__name__,
                },
            )
            await context.abort(
                grpc.StatusCode.ABORTED,
                "a concurrent change got in the way; try again",
                trailing_metadata=((ERROR_CODE_METADATA_KEY, "transaction_conflict"),),
            )
        elif database_unavailable(error):
            # An outage, not a bug: 503 to the client, one line (no traceback) in the log.
            log.warning(
                "database unavailable",
                extra={
                    "rpc": self.info.full_method,
                    "error": type(error.__cause__ or error).__name__,
                },
            )
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                "the database is unavailable",
                trailing_metadata=((ERROR_CODE_METADATA_KEY, "unavailable"),),
            )
        else:
            # The traceback stays in the server log; the caller learns only that it failed.
            log.error("unhandled error", extra={"rpc": self.info.full_method}, exc_info=error)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                "internal error",
                trailing_metadata=((ERROR_CODE_METADATA_KEY, "internal"),),
            )
        return False  # not reached: abort raises
