"""The P2 baseline: an unauthenticated hello-world on the gateway's HTTP stack, as its own process.

    python -m bench.hello_http --port 8081

The same aiohttp version, event loop and serving setup as the gateway (one process, an
AppRunner without access log, a TCPSite), and a handler that returns a small JSON object; none
of the gateway's own work (middleware, routing, authentication, metrics). That is what
PERFORMANCE.md's floor "aiohttp hello-world about 10k requests/s" means.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": "world"})


async def _serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/hello", _hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()  # until the benchmark terminates the process
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(_serve(parser.parse_args(argv).port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
