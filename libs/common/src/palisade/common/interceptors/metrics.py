"""Counts RPCs and their latency by service, method and status code."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

import grpc

from palisade.common.interceptors.base import AroundInterceptor, CallScope, RpcInfo
from palisade.common.metrics import GrpcServerMetrics


def _status_name(context: grpc.aio.ServicerContext[Any, Any], fallback: str) -> str:
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else fallback


class MetricsInterceptor(AroundInterceptor):
    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics

    def around(self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]) -> _Measured:
        return _Measured(self._metrics, info, context)


class _Measured(CallScope):
    __slots__ = ("_metrics", "_start")

    def __init__(
        self,
        metrics: GrpcServerMetrics,
        info: RpcInfo,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        super().__init__(info, context)
        self._metrics = metrics

    async def __aenter__(self) -> None:
        self._start = time.perf_counter()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if kind is None:
            code = _status_name(self.context, "OK")
        elif issubclass(kind, grpc.aio.AbortError):
            code = _status_name(self.context, "UNKNOWN")
        elif issubclass(kind, asyncio.CancelledError):
            code = "CANCELLED"
        else:
            code = "UNKNOWN"
        self._metrics.observe(self.info, code, time.perf_counter() - self._start)
        return False
