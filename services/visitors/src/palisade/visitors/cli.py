"""palisade-visitors: run the visitors service (`serve`, the default), or maintain its keys.

palisade-visitors serve          run the gRPC service (default)
palisade-visitors migrate        apply database migrations and exit
palisade-visitors key-versions   rows per data key version and per index key version (JSON)
palisade-visitors rewrap         move every visitor to the primary data key now (crypto's
                                 Rewrap: no plaintext here), then print what moved; resumable
palisade-visitors reindex        recompute blind indexes under the primary index key and
                                 report the versions in use to crypto (`keys retire --index`)
palisade-visitors page-token-key init   create the chats routes' page-token key file (0600)
                                 if missing (for a Secret; the embedded default makes it itself)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TextIO

from prometheus_client import CollectorRegistry

from palisade.common import event_loop
from palisade.common.clock import Clock, SystemClock
from palisade.common.errors import PalisadeError
from palisade.common.logs import configure_logging
from palisade.common.secret_files import harden_process
from palisade.visitors.config import SERVICE_NAME, VisitorsSettings
from palisade.visitors.maintenance import KeyMaintenance
from palisade.visitors.store import VisitorStore


async def _serve(settings: VisitorsSettings) -> None:
    from palisade.common.grpc_server import wait_for_termination
    from palisade.visitors.server import serve_visitors

    async with serve_visitors(settings):
        await wait_for_termination()


@asynccontextmanager
async def _store(settings: VisitorsSettings, *, migrate: bool) -> AsyncIterator[VisitorStore]:
    from palisade.common.migrations import service_database
    from palisade.visitors.tables import MIGRATIONS_PACKAGE

    async with service_database(
        settings.database_url,
        data_dir=settings.data_dir,
        service=SERVICE_NAME,
        migrations_package=MIGRATIONS_PACKAGE if migrate else None,
    ) as engine:
        yield VisitorStore(engine=engine)


@asynccontextmanager
async def _maintenance(settings: VisitorsSettings, clock: Clock) -> AsyncIterator[KeyMaintenance]:
    from palisade.common.edge_keys import open_service_keys
    from palisade.visitors.metrics import VisitorsMetrics
    from palisade.visitors.server import crypto_client, maintenance_of

    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp())
    async with (
        _store(settings, migrate=settings.migrate_on_start) as store,
        crypto_client(settings, clock, keys) as (crypto, _),
    ):
        yield maintenance_of(
            settings,
            store=store,
            crypto=crypto,
            clock=clock,
            metrics=VisitorsMetrics(CollectorRegistry()),
        )


async def key_versions(settings: VisitorsSettings, out: TextIO) -> int:
    async with _store(settings, migrate=settings.migrate_on_start) as store:
        data = await store.rows_per_data_version()
        index = await store.index_versions_in_use()
    out.write(
        json.dumps(
            {
                "rows_by_data_key_version": {str(v): n for v, n in sorted(data.items())},
                "index_key_versions_in_use": index,
            }
        )
        + "\n"
    )
    return 0


async def run_job(settings: VisitorsSettings, job: str, out: TextIO, clock: Clock) -> int:
    try:
        async with _maintenance(settings, clock) as maintenance:
            result = await (maintenance.rewrap() if job == "rewrap" else maintenance.reindex())
    except PalisadeError as exc:
        out.write(f"{job} stopped: {exc.code} (run it again to carry on from where it stopped)\n")
        return 1
    out.write(
        json.dumps(
            {
                "job": job,
                "target_version": result.target_version,
                "moved": result.moved,
                "erasures_finished": result.erased,
                "failed": result.failed,
            }
        )
        + "\n"
    )
    return 0 if result.failed == 0 else 1


def init_page_token_key(settings: VisitorsSettings, out: TextIO) -> int:
    from palisade.common.page_tokens import load_page_token_key
    from palisade.common.secret_files import SECRET_DIR_MODE

    path = settings.resolved_page_token_key_file()
    path.parent.mkdir(mode=SECRET_DIR_MODE, parents=True, exist_ok=True)
    load_page_token_key(path, create=True)
    out.write(f"page-token key at {path}\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palisade-visitors", description="Palisade visitors")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service (default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    commands.add_parser("key-versions", help="rows per data key version, index versions in use")
    commands.add_parser("rewrap", help="move every visitor to the primary data key version")
    commands.add_parser("reindex", help="recompute blind indexes under the primary index key")
    tokens = commands.add_parser("page-token-key", help="the page-token key file")
    tokens.add_subparsers(dest="action", required=True).add_parser("init", help="create it")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    settings: VisitorsSettings | None = None,
    out: TextIO | None = None,
    clock: Clock | None = None,
) -> int:
    """The console script (settings, out and clock: for tests)."""
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    clock = clock or SystemClock()
    command = args.command or "serve"
    if command == "serve":
        harden_process()
    settings = settings or VisitorsSettings()
    configure_logging(SERVICE_NAME, settings.log_level)
    if command == "serve":
        event_loop.run(_serve(settings), settings.event_loop)
        return 0
    if command == "migrate":

        async def migrate() -> None:
            async with _store(settings, migrate=True):
                pass

        asyncio.run(migrate())
        return 0
    if command == "page-token-key":
        return init_page_token_key(settings, out)
    if command == "key-versions":
        return asyncio.run(key_versions(settings, out))
    return asyncio.run(run_job(settings, command, out, clock))


if __name__ == "__main__":
    sys.exit(main())
