"""palisade-auth: run the auth service (`serve`, the default), apply its migrations, re-index,
or disable and enable accounts.

palisade-auth serve                 run the gRPC service (default)
palisade-auth migrate               apply database migrations and exit
palisade-auth reindex [--after ID]  move stored blind indexes to the primary index key
                                    version, then report the versions still in use to
                                    crypto (which `palisade-crypto keys retire --index`
                                    requires); resumable, idempotent, prints counts only
palisade-auth users disable EMAIL   disable an account: its sessions end at once (every
                                    gateway hears it), its API keys are revoked through
                                    apikeys, its emailed links die; no way in works
palisade-auth users enable EMAIL    let a disabled account sign in again
palisade-auth subjects migrate      move what was sealed before subject keys under each
                                    user's subject key (the service also does it in the
                                    background at start); resumable, idempotent, prints
                                    counts and user ids only

`users` prints the user id, never the address; exit status 1 if no account has the address
(or it is malformed), 3 if the database or crypto cannot be reached. `subjects migrate` exits
1 if a stored envelope could not be opened (left as it is, named by user id), 3 if crypto
cannot be reached (run it again: it goes on where it stopped).
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
    from palisade.common.migrations import service_database

    async with service_database(
        settings.database_url,
        data_dir=settings.data_dir,
        service=SERVICE_NAME,
        migrations_package=MIGRATIONS_PACKAGE,
    ):
        pass


async def _migrate_subjects(settings: AuthSettings) -> int:
    from sqlalchemy.exc import DBAPIError

    from palisade.auth.accounts.subject_migration import migrate_from_settings
    from palisade.common.errors import Unavailable

    try:
        result = await migrate_from_settings(settings)
    except Unavailable:
        print("crypto is unavailable; run the command again to go on", file=sys.stderr)
        return 3
    except DBAPIError as error:  # names the driver's error class, never data
        print(f"the database is unavailable ({type(error.orig).__name__})", file=sys.stderr)
        return 3
    return 1 if result.unreadable else 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palisade-auth", description="Palisade auth service")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the gRPC service (the default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    reindex = commands.add_parser("reindex", help="move blind indexes to the primary index key")
    reindex.add_argument(
        "--after", metavar="USER_ID", help="resume after this user id (printed by a run)"
    )
    subjects = commands.add_parser("subjects", help="subject keys of auth's stored PII")
    subjects.add_subparsers(dest="action", metavar="ACTION", required=True).add_parser(
        "migrate", help="move rows sealed before subject keys under each user's subject"
    )
    users = commands.add_parser("users", help="disable or enable an account")
    actions = users.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("disable", "disable an account"), ("enable", "enable it again")):
        actions.add_parser(action, help=text).add_argument("email", metavar="EMAIL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    harden_process()
    settings = AuthSettings()
    configure_logging(SERVICE_NAME, settings.log_level)
    if args.command == "reindex":
        from palisade.auth.accounts.reindex import reindex_from_settings

        result = asyncio.run(reindex_from_settings(settings, after=args.after))
        return 1 if result.collisions or result.unreadable else 0
    if args.command == "subjects":
        return asyncio.run(_migrate_subjects(settings))
    if args.command == "users":
        from palisade.auth.accounts.disabling_cli import run_users_command

        return asyncio.run(run_users_command(settings, args.action, args.email))
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
    else:
        event_loop.run(_serve(settings), settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
