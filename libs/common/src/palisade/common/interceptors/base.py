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

from palisade.common.errors import InvalidArgument

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


class _Undecodable:
    """Stands for a request body that did not parse, until the caller has been verified."""


UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc parses the body before any interceptor runs and answers a parse error with UNKNOWN
    # and the exception's text (class and message names). We parse to a sentinel instead and
    # refuse it with INVALID_ARGUMENT after authentication, like any other bad request.
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            return UNDECODABLE

    return parse


def _checked(request: Any) -> Any:
    if request is UNDECODABLE:
        raise InvalidArgument("request body is not a valid message")
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _checked(request)


def wrap_handler(
    handler: grpc.RpcMethodHandler[Any, Any],
    full_method: str,
    around: Around,
    *,
    validates_requests: bool = False,
) -> Any:
    """Returns a handler that runs the original inside `around`, preserving its kind.

    With validates_requests (the innermost interceptor only), request bodies that do not parse
    are refused inside `around`, i.e. after the caller assertion was checked.
    """
    service, method = _split(full_method)
    deserializer = handler.request_deserializer
    serializers = {
        "request_deserializer": _tolerant(deserializer) if validates_requests else deserializer,
        "response_serializer": handler.response_serializer,
    }
    streaming_request = bool(handler.stream_unary or handler.stream_stream)

    def check(request: Any) -> Any:
        if not validates_requests:
            return request
        return _checked_stream(request) if streaming_request else _checked(request)

    if handler.unary_unary or handler.stream_unary:
        kind = "unary_unary" if handler.unary_unary else "stream_unary"
        inner_unary: Any = handler.unary_unary or handler.stream_unary
        info = RpcInfo(full_method, service, method, kind)

        async def unary_response(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with around(info, context):
                result = inner_unary(check(request), context)
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
            result = inner_stream(check(request), context)
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

    validates_requests = False

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
        return wrap_handler(  # type: ignore[no-any-return]
            handler,
            handler_call_details.method,
            self.around,
            validates_requests=self.validates_requests,
        )


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    """The first value of one invocation metadata key (keys are lower-case on the wire)."""
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value if isinstance(value, str) else None
    return None
