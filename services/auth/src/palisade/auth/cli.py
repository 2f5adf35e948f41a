"""palisade-auth: run the auth service (`serve`, the default), apply its migrations, or re-index.

palisade-auth serve                 run the gRPC service (default)
palisade-auth migrate               apply database migrations and exit
palisade-auth reindex [--after ID]  move stored blind indexes to the primary index key
                                    version, then report the versions still in use to
                                    crypto (which `palisade-crypto keys retire --index`
                                    requires); resumable, idempotent, prints counts only
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from palisade.auth.config import SERVICE_NAME, AuthSettings
from palisade.common import event_loop
from palisade.common.logs import configure_logging
from palisade.common.secret_files import harden_process


async def _serve(settings: AuthSettings) -> None:
    from palisade.auth.server import serve_auth
    from palisade.common.grpc_server import wait_for_termination

    async with serve_auth(settings):
        await wait_for_termination()


async def _migrate(settings: AuthSettings) -> None:
    from palisade.auth.store import MIGRATIONS_PACKAGE
    from palisade.common.db import create_engine, resolve_database_url
    from palisade.common.migrations import upgrade

    engine = create_engine(
        resolve_database_url(
            settings.database_url, data_dir=settings.data_dir, service=SERVICE_NAME
        )
    )
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="palisade-auth", description="Palisade auth service")
    parser.add_argument(
        "command", nargs="?", default="serve", choices=["serve", "migrate", "reindex"]
    )
    parser.add_argument(
        "--after", metavar="USER_ID", help="reindex: resume after this user id (printed by a run)"
    )
    args = parser.parse_args(argv)
    harden_process()
    settings = AuthSettings()
    configure_logging(SERVICE_NAME, settings.log_level)
    if args.command == "reindex":
        from palisade.auth.accounts.reindex import reindex_from_settings

        result = asyncio.run(reindex_from_settings(settings, after=args.after))
        return 1 if result.collisions or result.unreadable else 0
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
    else:
        event_loop.run(_serve(settings), settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
