"""aiohttp's server, made to answer malformed HTTP like every other error.

Before any middleware runs, aiohttp's parser refuses broken requests itself: in text/plain,
echoing the offending bytes (a bearer token, say), with its version in `Server`, and logs a
traceback holding those bytes. We answer them with a generic problem+json instead, and log
only what kind of error it was.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web, web_protocol, web_server

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
