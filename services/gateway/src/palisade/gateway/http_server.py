"""aiohttp's server, made to answer malformed HTTP like every other error.

Before any middleware runs, aiohttp's parser refuses broken requests itself: in text/plain,
echoing the offending bytes (a bearer token, say), with its version in `Server`, and logs a
traceback holding those bytes. We answer them with a generic problem+json instead, and log
only what kind of error it was.

There is no access log: aiohttp's logs the request line, query string included, and a query
string can hold a secret the gateway did not ask for (a magic link's token, pasted URLs).
Per-request facts go to metrics, labelled by route template, never by raw path or query.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web, web_protocol, web_server, web_urldispatcher

from palisade.gateway.problems import problem

log = logging.getLogger("palisade.gateway.http")


class _QuietRequestHandler(web_protocol.RequestHandler):
    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.info(
            "refused a malformed HTTP request",
            extra={"status": status, "error": type(exc).__name__ if exc else None},
        )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; closing the connection")
        response = problem(status if 400 <= status < 600 else 500)
        response.headers["Server"] = "palisade"
        response.force_close()
        return response


class _QuietServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class QuietAppRunner(web.AppRunner):
    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        # Same object, our handler factory (aiohttp builds the Server privately).
        server.__class__ = _QuietServer
        return server


async def expect_handler(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` as aiohttp handles it; any other expectation gets a problem
    (aiohttp's own refusal, made before any handler runs, is text/plain echoing the header)."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        await web_urldispatcher._default_expect_handler(request)
        return None
    response = problem(417, detail="only Expect: 100-continue is supported")
    response.headers["Server"] = "palisade"
    response.force_close()  # the client holds its body back: the connection cannot go on
    return response


def make_runner(app: web.Application, *, shutdown_seconds: float = 60.0) -> QuietAppRunner:
    """The runner the gateway serves with: quiet on malformed HTTP, and no access log.
    On shutdown, requests in flight get `shutdown_seconds` to finish."""
    return QuietAppRunner(app, access_log=None, shutdown_timeout=shutdown_seconds)
