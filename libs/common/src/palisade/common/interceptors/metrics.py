"""Counts RPCs and their latency by service, method and status code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from palisade.common.interceptors.base import AroundInterceptor, RpcInfo
from palisade.common.metrics import GrpcServerMetrics


def _status_name(context: grpc.aio.ServicerContext[Any, Any], fallback: str) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else fallback


class MetricsInterceptor(AroundInterceptor):
    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics

    @asynccontextmanager
    async def around(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        start = time.perf_counter()
        code = "OK"
        try:
            yield
            code = _status_name(context, "OK")
        except grpc.aio.AbortError:
            code = _status_name(context, "UNKNOWN")
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except BaseException:
            code = "UNKNOWN"
            raise
        finally:
            self._metrics.observe(info, code, time.perf_counter() - start)
