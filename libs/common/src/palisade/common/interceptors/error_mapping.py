"""Maps domain exceptions to gRPC statuses with safe messages and a stable machine code."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from palisade.common.db import database_unavailable
from palisade.common.errors import ERROR_CODE_METADATA_KEY, PalisadeError
from palisade.common.interceptors.base import AroundInterceptor, RpcInfo

log = logging.getLogger("palisade.rpc")


class ErrorMappingInterceptor(AroundInterceptor):
    @asynccontextmanager
    async def around(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except PalisadeError as exc:
            await context.abort(
                exc.status,
                exc.message,
                trailing_metadata=((ERROR_CODE_METADATA_KEY, exc.code), *exc.trailing_metadata()),
            )
        except Exception as exc:
            if database_unavailable(exc):
                # An outage, not a bug: 503 to the client, one line (no traceback) in the log.
                log.warning(
                    "database unavailable",
                    extra={"rpc": info.full_method, "error": type(exc.__cause__ or exc).__name__},
                )
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the database is unavailable",
                    trailing_metadata=((ERROR_CODE_METADATA_KEY, "unavailable"),),
                )
            # The traceback stays in the server log; the caller learns only that it failed.
            log.exception("unhandled error", extra={"rpc": info.full_method})
            await context.abort(
                grpc.StatusCode.INTERNAL,
                "internal error",
                trailing_metadata=((ERROR_CODE_METADATA_KEY, "internal"),),
            )
