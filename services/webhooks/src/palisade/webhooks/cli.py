"""palisade-webhooks: run the webhooks service (`serve`, the default), or look at its endpoints.

palisade-webhooks serve            run the gRPC service, the delivery worker and the intake
palisade-webhooks migrate          apply database migrations and exit
palisade-webhooks endpoints list [--workspace WS]
                                   endpoints as JSON lines, newest first: id, workspace, the
                                   URL's origin (never its path or query, which may hold a
                                   receiver's token), event types, enabled and why not
palisade-webhooks page-token-key init   create the delivery log's page-token key file (0600)
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

from palisade.common import event_loop
from palisade.common.logs import configure_logging
from palisade.common.secret_files import harden_process
from palisade.webhooks.config import SERVICE_NAME, WebhooksSettings
from palisade.webhooks.store import WebhookStore


async def _serve(settings: WebhooksSettings) -> None:
    from palisade.common.grpc_server import wait_for_termination
    from palisade.webhooks.server import serve_webhooks

    async with serve_webhooks(settings):
        await wait_for_termination()


@asynccontextmanager
async def _store(settings: WebhooksSettings, *, migrate: bool) -> AsyncIterator[WebhookStore]:
    from palisade.common.migrations import service_database
    from palisade.webhooks.tables import MIGRATIONS_PACKAGE

    async with service_database(
        settings.database_url,
        data_dir=settings.data_dir,
        service=SERVICE_NAME,
        migrations_package=MIGRATIONS_PACKAGE if migrate else None,
    ) as engine:
        yield WebhookStore(engine=engine)


async def list_endpoints(settings: WebhooksSettings, workspace_id: str | None, out: TextIO) -> int:
    async with _store(settings, migrate=settings.migrate_on_start) as store:
        rows = await store.all_endpoint_rows(workspace_id)
    for row in rows:
        line = {
            "id": row.id,
            "workspace_id": row.workspace_id,
            "url_origin": row.url_origin,
            "event_types": json.loads(row.event_types),
            "enabled": bool(row.enabled),
            "disabled_reason": row.disabled_reason,
            "failing_since": row.failing_since.isoformat() if row.failing_since else None,
            "created_at": row.created_at.isoformat(),
        }
        out.write(json.dumps(line) + "\n")
    return 0


def init_page_token_key(settings: WebhooksSettings, out: TextIO) -> int:
    from palisade.common.page_tokens import load_page_token_key
    from palisade.common.secret_files import SECRET_DIR_MODE

    path = settings.resolved_page_token_key_file()
    path.parent.mkdir(mode=SECRET_DIR_MODE, parents=True, exist_ok=True)
    load_page_token_key(path, create=True)
    out.write(f"page-token key at {path}\n")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="palisade-webhooks",
        description="The Palisade webhooks service (signed deliveries, SSRF-safe egress).",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the service, the worker and the intake (default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    endpoints = commands.add_parser("endpoints", help="the webhook endpoints")
    listing = endpoints.add_subparsers(dest="action", required=True).add_parser(
        "list", help="endpoints as JSON lines (no URL path or query, no secret)"
    )
    listing.add_argument("--workspace", help="only this workspace's endpoints")
    tokens = commands.add_parser("page-token-key", help="the page-token key file")
    tokens.add_subparsers(dest="action", required=True).add_parser("init", help="create it")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    settings: WebhooksSettings | None = None,
    out: TextIO | None = None,
) -> int:
    """The console script (settings and out: for tests)."""
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    command = args.command or "serve"
    if command == "serve":
        harden_process()
    settings = settings or WebhooksSettings()
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
    return asyncio.run(list_endpoints(settings, args.workspace, out))


if __name__ == "__main__":
    sys.exit(main())
