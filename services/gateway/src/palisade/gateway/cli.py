"""palisade-gateway: serve the public HTTP API."""

from __future__ import annotations

import argparse
import sys

from palisade.common import event_loop
from palisade.common.logs import configure_logging
from palisade.common.secret_files import harden_process
from palisade.gateway.config import SERVICE_NAME, GatewaySettings


async def _serve(settings: GatewaySettings) -> None:
    from palisade.common.grpc_server import wait_for_termination
    from palisade.gateway.server import serve_gateway

    async with serve_gateway(settings):
        await wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="palisade-gateway", description="Palisade gateway")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve"])
    parser.parse_args(argv)
    harden_process()
    settings = GatewaySettings()
    configure_logging(SERVICE_NAME, settings.log_level)
    event_loop.run(_serve(settings), settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
