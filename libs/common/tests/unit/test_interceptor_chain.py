"""InterceptorChain runs several `around`s exactly as nested `async with` blocks would (issue 10:
one grpc interceptor instead of four, for CPU), and wrapped handlers are reused per method."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import pytest

from palisade.common.interceptors.base import AroundInterceptor, InterceptorChain, RpcInfo

INFO = RpcInfo("/pkg.Service/Method", "pkg.Service", "Method", "unary_unary")


class Boom(Exception):
    pass


class Mapped(Exception):
    pass


class Recorder(AroundInterceptor):
    """Logs enter/exit and what it saw; optionally fails on entry or maps an error on exit."""

    def __init__(
        self,
        name: str,
        log: list[str],
        *,
        fail_on_enter: bool = False,
        map_errors: bool = False,
        validates: bool = False,
    ) -> None:
        self.name = name
        self.log = log
        self.fail_on_enter = fail_on_enter
        self.map_errors = map_errors
        self.validates_requests = validates

    @asynccontextmanager
    async def around(self, info, context) -> AsyncIterator[None]:
        self.log.append(f"enter {self.name}")
        if self.fail_on_enter:
            raise Boom(self.name)
        try:
            yield
        except Boom as error:
            self.log.append(f"{self.name} saw {error}")
            if self.map_errors:
                raise Mapped(str(error)) from None
            raise
        except Mapped as error:
            self.log.append(f"{self.name} saw mapped {error}")
            raise
        finally:
            self.log.append(f"exit {self.name}")


async def _nested(stages: list[Recorder], body) -> None:
    """The reference: the same arounds as literal nested blocks."""
    if not stages:
        await body()
        return
    async with stages[0].around(INFO, None):
        await _nested(stages[1:], body)


async def _chained(stages: list[Recorder], body) -> None:
    async with InterceptorChain(stages).around(INFO, None):
        await body()


def _stages(log: list[str], **options: dict[str, bool]) -> list[Recorder]:
    return [Recorder(name, log, **options.get(name, {})) for name in ("outer", "middle", "inner")]


async def _run(runner, options: dict[str, dict[str, bool]], body) -> tuple[list[str], str]:
    log: list[str] = []
    try:
        await runner(_stages(log, **options), body)
        outcome = "ok"
    except Exception as error:
        outcome = f"{type(error).__name__}({error})"
    return log, outcome


async def _ok() -> None:
    return None


async def _boom() -> None:
    raise Boom("body")


@pytest.mark.parametrize(
    ("options", "body"),
    [
        ({}, _ok),
        ({}, _boom),
        ({"middle": {"map_errors": True}}, _boom),  # an exit replaces the error in flight
        ({"inner": {"fail_on_enter": True}}, _ok),  # a refusal on entry unwinds the outer ones
        ({"inner": {"fail_on_enter": True}, "outer": {"map_errors": True}}, _ok),
        ({"middle": {"fail_on_enter": True}}, _ok),
    ],
)
async def test_the_chain_behaves_like_nesting(options, body) -> None:
    assert await _run(_chained, options, body) == await _run(_nested, options, body)


def test_only_the_innermost_stage_may_validate_requests() -> None:
    log: list[str] = []
    with pytest.raises(ValueError, match="innermost"):
        InterceptorChain([Recorder("a", log, validates=True), Recorder("b", log)])
    chain = InterceptorChain([Recorder("a", log), Recorder("b", log, validates=True)])
    assert chain.validates_requests
    with pytest.raises(ValueError, match="at least one"):
        InterceptorChain([])


async def test_wrapped_handlers_are_reused_per_method() -> None:
    async def echo(request, context):
        return request

    handlers = {
        "/pkg.Service/A": grpc.unary_unary_rpc_method_handler(echo),
        "/pkg.Service/B": grpc.unary_unary_rpc_method_handler(echo),
    }

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method

    async def continuation(details):
        return handlers.get(details.method)

    chain = InterceptorChain([Recorder("only", [])])
    first = await chain.intercept_service(continuation, Details("/pkg.Service/A"))
    again = await chain.intercept_service(continuation, Details("/pkg.Service/A"))
    other = await chain.intercept_service(continuation, Details("/pkg.Service/B"))
    assert first is again
    assert other is not first
    assert await chain.intercept_service(continuation, Details("/pkg.Service/Nope")) is None
    # A different inner handler for the same method (never, in practice) is wrapped anew.
    handlers["/pkg.Service/A"] = grpc.unary_unary_rpc_method_handler(echo)
    assert await chain.intercept_service(continuation, Details("/pkg.Service/A")) is not first
