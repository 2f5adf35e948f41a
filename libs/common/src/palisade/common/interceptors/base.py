"""One way to wrap every kind of RPC (unary/stream in and out) in an async context manager.

Each interceptor only says what happens around a call; this module is the one place that knows
how the four handler kinds of grpc.aio are rebuilt around it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

# Infrastructure RPCs that need no caller assertion (they are served on the gRPC port for
# probes and tooling, and reveal nothing).
EXEMPT_SERVICE_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


@dataclass(frozen=True)
class RpcInfo:
    """What an interceptor knows about the RPC it wraps."""

    full_method: str  # "/palisade.crypto.v1.CryptoService/Encrypt"
    service: str  # "palisade.crypto.v1.CryptoService"
    method: str  # "Encrypt"
    kind: str  # "unary_unary", "unary_stream", "stream_unary" or "stream_stream"

    @property
    def exempt_from_assertion(self) -> bool:
        return self.full_method.startswith(EXEMPT_SERVICE_PREFIXES)


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


Around = Callable[[RpcInfo, grpc.aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]


def wrap_handler(handler: grpc.RpcMethodHandler[Any, Any], full_method: str, around: Around) -> Any:
    """Returns a handler that runs the original inside `around`, preserving its kind."""
    service, method = _split(full_method)
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary or handler.stream_unary:
        kind = "unary_unary" if handler.unary_unary else "stream_unary"
        inner_unary: Any = handler.unary_unary or handler.stream_unary
        info = RpcInfo(full_method, service, method, kind)

        async def unary_response(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with around(info, context):
                result = inner_unary(request, context)
                return await result if inspect.isawaitable(result) else result

        factory = (
            grpc.unary_unary_rpc_method_handler
            if handler.unary_unary
            else grpc.stream_unary_rpc_method_handler
        )
        return factory(unary_response, **serializers)

    kind = "unary_stream" if handler.unary_stream else "stream_stream"
    inner_stream: Any = handler.unary_stream or handler.stream_stream
    info = RpcInfo(full_method, service, method, kind)

    async def stream_response(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async with around(info, context):
            result = inner_stream(request, context)
            if inspect.isawaitable(result):  # a handler that writes with context.write()
                await result
            else:
                async for item in result:
                    yield item

    factory = (
        grpc.unary_stream_rpc_method_handler
        if handler.unary_stream
        else grpc.stream_stream_rpc_method_handler
    )
    return factory(stream_response, **serializers)


if TYPE_CHECKING:  # the stubs make it generic; the runtime class is not subscriptable
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class AroundInterceptor(_ServerInterceptor):
    """Base class: subclasses implement `around(info, context)` as an async context manager."""

    def around(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return wrap_handler(handler, handler_call_details.method, self.around)  # type: ignore[no-any-return]


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    """The first value of one invocation metadata key (keys are lower-case on the wire)."""
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value if isinstance(value, str) else None
    return None
