"""One way to wrap every kind of RPC (unary/stream in and out) in an async context manager.

Each interceptor only says what happens around a call; this module is the one place that knows
how the four handler kinds of grpc.aio are rebuilt around it.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
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
        method = handler_call_details.method
        # Wrapped handlers by method, with the handler each wraps: grpc asks every interceptor
        # for the handler on every call, and rebuilding the wrapper (closures, the RpcInfo,
        # the handler tuple) each time is work thrown away. Bounded by the registered
        # methods (an unknown one has no handler). Made on first use, so that subclasses
        # need not call an __init__ here.
        cache: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = self.__dict__.setdefault("_wrapped", {})
        cached = cache.get(method)
        # The same inner handler each time (the servicer's, or the next interceptor's cached
        # wrapper): reuse the wrapper; a different one (never, in practice) is wrapped anew.
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped: grpc.RpcMethodHandler[Any, Any] = wrap_handler(
            handler, method, self.around, validates_requests=self.validates_requests
        )
        cache[method] = (handler, wrapped)
        return wrapped


class CallScope:
    """What a stage's `around` returns for one call: a plain async context manager holding the
    RPC's info and context. A class rather than an @asynccontextmanager generator, because it
    runs on every RPC and the generator machinery cost more than most stages' work.
    Subclasses override what they need; an exception raised from __aexit__ replaces the one in
    flight, as raising in an except block would."""

    __slots__ = ("context", "info")

    def __init__(self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.info = info
        self.context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return False


class InterceptorChain(AroundInterceptor):
    """Several interceptors' `around`s run as one grpc interceptor, outermost first.

    Same behaviour as installing them one by one, at a fraction of the per-call cost: grpc
    runs each installed interceptor on every call (a coroutine, a continuation, a wrapped
    handler calling the next), which for four of them cost more CPU than the RPCs they wrap.
    Request validation happens inside the innermost `around`, as the innermost one asks.
    """

    def __init__(self, stages: Sequence[AroundInterceptor]) -> None:
        if not stages:
            raise ValueError("an interceptor chain needs at least one stage")
        if any(stage.validates_requests for stage in stages[:-1]):
            raise ValueError("only the innermost stage may validate requests")
        self._stages = tuple(stages)
        self.validates_requests = stages[-1].validates_requests

    def around(
        self, info: RpcInfo, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AbstractAsyncContextManager[None]:
        return _Nested([stage.around(info, context) for stage in self._stages])


class _Nested:
    """`async with a, b, c:` for a list built at run time, without an AsyncExitStack's cost."""

    __slots__ = ("_entered", "_managers")

    def __init__(self, managers: list[AbstractAsyncContextManager[None]]) -> None:
        self._managers = managers
        self._entered = 0

    async def __aenter__(self) -> None:
        try:
            for manager in self._managers:
                await manager.__aenter__()
                self._entered += 1
        except BaseException as error:
            # Unwind what was entered, innermost first, as nested `async with` would; that
            # re-raises the error or whatever an outer stage turned it into.
            await self._unwind(type(error), error, error.__traceback__)
            # An outer stage swallowed it: nesting would skip the body, which one context
            # manager cannot do. No stage here swallows errors, so this is a programming error.
            raise RuntimeError("an interceptor stage swallowed an error on entry") from error

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: Any
    ) -> bool:
        return await self._unwind(kind, error, tb)

    async def _unwind(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: Any
    ) -> bool:
        # Each manager sees what the one inside it let through, exactly as nesting does: an
        # exception raised by an exit replaces the one in flight; a True return swallows it.
        while self._entered:
            self._entered -= 1
            manager = self._managers[self._entered]
            try:
                if await manager.__aexit__(kind, error, tb):
                    kind, error, tb = None, None, None
            except BaseException as raised:
                kind, error, tb = type(raised), raised, raised.__traceback__
        if error is not None:
            raise error
        return True


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    """The first value of one invocation metadata key (keys are lower-case on the wire)."""
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value if isinstance(value, str) else None
    return None
