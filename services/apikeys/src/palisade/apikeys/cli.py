"""palisade-apikeys: run the apikeys service (`serve`, the default), or operate on its keys.

palisade-apikeys serve                      run the gRPC service (default)
palisade-apikeys migrate                    apply database migrations and exit
palisade-apikeys keys list --workspace ID   a workspace's keys (prefix and last four only)
palisade-apikeys keys revoke KEY_ID         revoke a key of any workspace; the running
                                            service's relay tells every gateway at once
palisade-apikeys limits show                the rate limit of keys created without one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TextIO

from palisade.apikeys.config import SERVICE_NAME, ApiKeysSettings
from palisade.apikeys.errors import KeyNotFound
from palisade.apikeys.model import KeyRecord
from palisade.apikeys.store import ApiKeyStore
from palisade.common import event_loop
from palisade.common.clock import Clock, SystemClock
from palisade.common.logs import configure_logging
from palisade.common.secret_files import harden_process


async def _serve(settings: ApiKeysSettings) -> None:
    from palisade.apikeys.server import serve_apikeys
    from palisade.common.grpc_server import wait_for_termination

    async with serve_apikeys(settings):
        await wait_for_termination()


@asynccontextmanager
async def _store(settings: ApiKeysSettings, *, migrate: bool) -> AsyncIterator[ApiKeyStore]:
    from palisade.apikeys.tables import MIGRATIONS_PACKAGE
    from palisade.common.migrations import service_database

    async with service_database(
        settings.database_url,
        data_dir=settings.data_dir,
        service=SERVICE_NAME,
        migrations_package=MIGRATIONS_PACKAGE if migrate else None,
    ) as engine:
        yield ApiKeyStore(engine=engine)


def _row(record: KeyRecord, clock: Clock) -> dict[str, object]:
    limit = record.rate_limit
    return {
        "id": record.id,
        "name": record.name,
        "type": record.type,
        "mode": record.mode,
        "prefix": record.prefix,
        "last4": record.last4,
        "scopes": list(record.scopes),
        "state": record.state(clock.now()),
        "created_by": record.created_by,
        "created_at": record.created_at.isoformat(),
        "last_used_at": record.last_used_at.isoformat() if record.last_used_at else None,
        "rate_limit": (
            {"requests_per_minute": limit.requests_per_minute, "burst": limit.burst}
            if limit
            else "default"
        ),
    }


async def list_keys(settings: ApiKeysSettings, workspace_id: str, out: TextIO, clock: Clock) -> int:
    async with _store(settings, migrate=settings.migrate_on_start) as store:
        records: list[KeyRecord] = []
        async with store.transaction() as tx:
            before = None
            while True:
                page = await tx.keys(workspace_id, before=before, limit=500)
                records.extend(page)
                if len(page) < 500:
                    break
                before = (page[-1].created_at, page[-1].id)
    for record in records:
        out.write(json.dumps(_row(record, clock)) + "\n")
    return 0


async def revoke_key(settings: ApiKeysSettings, key_id: str, out: TextIO, clock: Clock) -> int:
    from palisade.apikeys.history_seal import HistorySeal
    from palisade.apikeys.notices import NoticeOutbox
    from palisade.apikeys.revoking import KeyRevoker
    from palisade.apikeys.tables import revocation_outbox
    from palisade.common.revocation_outbox import RevocationOutbox

    async with _store(settings, migrate=settings.migrate_on_start) as store:
        revoker = KeyRevoker(
            store=store,
            revocations=RevocationOutbox(table=revocation_outbox, clock=clock),
            notices=NoticeOutbox(clock=clock),
            seal=HistorySeal(crypto=None),  # the operator acts as the system: no client
            clock=clock,
        )
        try:
            revoked = await revoker.revoke_as_operator(key_id)
        except KeyNotFound:
            out.write(f"no key {key_id}\n")
            return 1
    out.write(f"{'revoked' if revoked else 'already revoked'} {key_id}\n")
    return 0


def show_limits(settings: ApiKeysSettings, out: TextIO) -> int:
    out.write(
        json.dumps(
            {
                "default_rate_limit": {
                    "requests_per_minute": settings.default_rate_limit_rpm,
                    "burst": settings.default_rate_limit_burst,
                },
                "bounds": {"requests_per_minute": [1, 100_000], "burst": [1, 10_000]},
            }
        )
        + "\n"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palisade-apikeys", description="Palisade API keys")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service (default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    keys = commands.add_parser("keys", help="a workspace's keys").add_subparsers(
        dest="action", required=True
    )
    listing = keys.add_parser("list", help="list a workspace's keys (one JSON object a line)")
    listing.add_argument("--workspace", required=True, metavar="ID")
    revoke = keys.add_parser("revoke", help="revoke a key (gateways hear it at once)")
    revoke.add_argument("key_id", metavar="KEY_ID")
    limits = commands.add_parser("limits", help="rate limits").add_subparsers(
        dest="action", required=True
    )
    limits.add_parser("show", help="the default rate limit of keys")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    settings: ApiKeysSettings | None = None,
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
    settings = settings or ApiKeysSettings()
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
    if command == "limits":
        return show_limits(settings, out)
    if args.action == "list":
        return asyncio.run(list_keys(settings, args.workspace, out, clock))
    return asyncio.run(revoke_key(settings, args.key_id, out, clock))


if __name__ == "__main__":
    sys.exit(main())
