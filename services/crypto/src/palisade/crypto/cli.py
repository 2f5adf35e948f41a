"""palisade-crypto: run the service, migrate its database, and operate the keyring.

    palisade-crypto serve                 run the gRPC service (default)
    palisade-crypto migrate               apply database migrations and exit
    palisade-crypto keys init             create the keyring file (0600) if there is none
    palisade-crypto keys rotate [--index] add a key version and make it primary
    palisade-crypto keys status           versions, primary, retired, encryption counts
    palisade-crypto keys retire --below N [--index]
                                          refuse versions below N (rewrap old data first);
                                          data keys: first moves every subject secret still
                                          wrapped below N to the primary (exit 3 if the
                                          database is unreachable);
                                          --index is refused while any service that ever
                                          asked for a blind index has not reported (after
                                          v N took over) that its rows use no older version:
                                          run `palisade-auth reindex` first. No --force.
    palisade-crypto subjects shred SUBJECT
                                          crypto-shred a data subject ("user:usr_…"): every
                                          ciphertext made for it fails with subject_erased
                                          from now on, wherever it was copied. Exit 0 once it
                                          is shredded (now or before), 1 if refused.

Running servers pick up keyring changes within keyring_reload_seconds; no restart needed.
No command ever prints key material.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

from palisade.common import event_loop
from palisade.common.clock import SystemClock
from palisade.common.errors import PalisadeError
from palisade.common.logs import configure_logging
from palisade.common.secret_files import harden_process
from palisade.crypto.config import SERVICE_NAME, CryptoSettings
from palisade.crypto.keyring import Keyring, VersionedKeys
from palisade.crypto.keyring_file import create_keyring, read_keyring, update_keyring

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

# The server, database and migration stacks are imported where they are used: operators run
# the keyring commands by hand, and those should answer at once.


async def _serve(settings: CryptoSettings) -> None:
    from palisade.common.grpc_server import wait_for_termination
    from palisade.crypto.server import serve_crypto

    async with serve_crypto(settings):
        await wait_for_termination()


async def _migrate(settings: CryptoSettings) -> None:
    from palisade.common.migrations import upgrade
    from palisade.crypto.store import MIGRATIONS_PACKAGE

    engine = _engine(settings)
    try:
        await upgrade(engine, MIGRATIONS_PACKAGE)
    finally:
        await engine.dispose()


def _engine(settings: CryptoSettings) -> AsyncEngine:
    from palisade.common.db import create_engine, resolve_database_url

    return create_engine(
        resolve_database_url(
            settings.database_url, data_dir=settings.data_dir, service=SERVICE_NAME
        )
    )


async def _usage_totals(settings: CryptoSettings) -> dict[int, int] | None:
    from palisade.crypto.store import DatabaseUsageStore

    engine = _engine(settings)
    try:
        return await DatabaseUsageStore(engine=engine).totals()
    except Exception:
        return None  # status still shows versions when the database is unreachable
    finally:
        await engine.dispose()


async def _index_retire_blockers(settings: CryptoSettings, below: int) -> list[str]:
    """Why retiring index versions below `below` would strand stored rows (see
    palisade.crypto.index_consumers); an unreachable database is a reason too."""
    from palisade.crypto.index_consumers import consumers, retire_blockers

    keyring = read_keyring(settings.resolved_keyring_file())
    engine = _engine(settings)
    try:
        records = await consumers(engine)
    except Exception as exc:
        return [f"the crypto database is unreachable ({type(exc).__name__}): cannot check"]
    finally:
        await engine.dispose()
    return retire_blockers(
        keyring.index, below, records, reload_seconds=settings.keyring_reload_seconds
    )


async def _data_retire_blockers(settings: CryptoSettings, below: int) -> list[str]:
    """Why retiring data versions below `below` would strand a reporting service's envelopes
    (see palisade.crypto.data_consumers); an unreachable database is a reason too."""
    from palisade.crypto.data_consumers import data_reports, data_retire_blockers

    engine = _engine(settings)
    try:
        reports = await data_reports(engine)
    except Exception as exc:
        return [f"the crypto database is unreachable ({type(exc).__name__}): cannot check"]
    finally:
        await engine.dispose()
    return data_retire_blockers(below, reports)


async def _move_subject_secrets(
    settings: CryptoSettings, keyring: Keyring, below: int
) -> list[str]:
    """Moves subject secrets off the data-key versions about to be retired; why retiring must
    wait, if anything stands in the way (see palisade.crypto.subjects.move_secrets_forward)."""
    from palisade.crypto.subject_store import DatabaseSubjectStore
    from palisade.crypto.subjects import move_secrets_forward

    engine = _engine(settings)
    try:
        sweep = await move_secrets_forward(DatabaseSubjectStore(engine=engine), keyring.data, below)
    except Exception as exc:
        return [
            f"the crypto database is unreachable ({type(exc).__name__}): cannot move the "
            "subject secrets wrapped under those versions"
        ]
    finally:
        await engine.dispose()
    print(f"moved {sweep.moved} subject secret(s) to data key v{keyring.data.primary}")
    if sweep.unreadable:
        print(
            f"warning: {sweep.unreadable} subject secret(s) are wrapped under versions that are "
            "already unusable; their subjects' data cannot be read",
            file=sys.stderr,
        )
    if sweep.remaining:
        return [
            f"{sweep.remaining} subject secret(s) were wrapped below v{below} meanwhile (a "
            "replica that has not loaded the new primary yet?): run the command again"
        ]
    return []


def _print_keys(title: str, keys: VersionedKeys, totals: dict[int, int] | None) -> None:
    print(f"{title}: primary v{keys.primary}, versions below v{keys.min_version} retired")
    for version, key in sorted(keys.keys.items()):
        flags = []
        if version == keys.primary:
            flags.append("primary")
        if version < keys.min_version:
            flags.append("retired")
        count = "" if totals is None else f"  encryptions={totals.get(version, 0)}"
        print(f"  v{version}  created {key.created_at.isoformat()}{count}  {' '.join(flags)}")


def _keys_command(args: argparse.Namespace, settings: CryptoSettings) -> int:
    path = settings.resolved_keyring_file()
    clock = SystemClock()
    if args.keys_command == "init":
        created = create_keyring(path, clock)
        print(f"{'created' if created else 'kept the existing'} keyring at {path}")
        return 0
    if args.keys_command == "rotate":

        def rotate(keyring: Keyring) -> Keyring:
            if args.index:
                return replace(keyring, index=keyring.index.rotated(clock.now()))
            return replace(keyring, data=keyring.data.rotated(clock.now()))

        keyring = update_keyring(path, rotate)
        kind, keys = ("index", keyring.index) if args.index else ("data", keyring.data)
        print(f"rotated: {kind} key v{keys.primary} is now primary")
        return 0
    if args.keys_command == "retire":
        if args.index:
            reasons = asyncio.run(_index_retire_blockers(settings, args.below))
            if reasons:
                print(
                    f"refused: index key versions below v{args.below} are still in use:",
                    file=sys.stderr,
                )
                for reason in reasons:
                    print(f"  {reason}", file=sys.stderr)
                return 3
        else:
            keyring = read_keyring(path)
            keyring.data.retired_below(args.below)  # refused (the primary?) before any work
            reasons = asyncio.run(_data_retire_blockers(settings, args.below))
            if reasons:
                print(
                    f"refused: data key versions below v{args.below} are still in use:",
                    file=sys.stderr,
                )
                for reason in reasons:
                    print(f"  {reason}", file=sys.stderr)
                return 3
            reasons = asyncio.run(_move_subject_secrets(settings, keyring, args.below))
            if reasons:
                print(
                    f"refused: data key versions below v{args.below} still wrap subject secrets:",
                    file=sys.stderr,
                )
                for reason in reasons:
                    print(f"  {reason}", file=sys.stderr)
                return 3

        def retire(keyring: Keyring) -> Keyring:
            if args.index:
                return replace(keyring, index=keyring.index.retired_below(args.below))
            return replace(keyring, data=keyring.data.retired_below(args.below))

        update_keyring(path, retire)
        print(f"retired {'index' if args.index else 'data'} key versions below v{args.below}")
        return 0
    keyring = read_keyring(path)
    totals = asyncio.run(_usage_totals(settings))
    _print_keys("data keys", keyring.data, totals)
    _print_keys("index keys", keyring.index, None)
    if totals is None:
        print("(encryption counts unavailable: database unreachable)")
    return 0


async def _shred(settings: CryptoSettings, subject: str) -> bool:
    from palisade.crypto.subject_store import DatabaseSubjectStore
    from palisade.crypto.subjects import shred_subject

    engine = _engine(settings)
    try:
        store = DatabaseSubjectStore(engine=engine)
        return await shred_subject(store, subject, now=SystemClock().now(), actor="cli")
    finally:
        await engine.dispose()


def _subjects_command(args: argparse.Namespace, settings: CryptoSettings) -> int:
    from palisade.crypto.subjects import check_subject

    try:
        check_subject(args.subject)
    except PalisadeError as exc:
        print(f"refused: {exc.message}", file=sys.stderr)
        return 1
    try:
        shredded = asyncio.run(_shred(settings, args.subject))
    except Exception as exc:  # the database: nothing was shredded, say so and how to retry
        print(
            f"refused: the crypto database is unreachable or not migrated "
            f"({type(exc).__name__}); nothing was shredded",
            file=sys.stderr,
        )
        return 1
    # The subject is the operator's own input; its ciphertexts' fate is what they need to know.
    print(
        "shredded: every ciphertext of the subject now fails with subject_erased"
        if shredded
        else "already shredded: nothing changed"
    )
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palisade-crypto", description="Palisade crypto service")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service")
    commands.add_parser("migrate", help="apply database migrations")
    keys = commands.add_parser("keys", help="operate the keyring").add_subparsers(
        dest="keys_command", required=True
    )
    keys.add_parser("init", help="create the keyring if missing")
    rotate = keys.add_parser("rotate", help="add a key version and make it primary")
    rotate.add_argument("--index", action="store_true", help="rotate the blind-index key")
    keys.add_parser("status", help="show versions and encryption counts")
    retire = keys.add_parser("retire", help="refuse key versions below a version")
    retire.add_argument("--below", type=int, required=True)
    retire.add_argument(
        "--index",
        action="store_true",
        help="retire blind-index key versions; refused (exit 3, naming the service) until "
        "every service that ever asked for a blind index has reported, after v N took over, "
        "that its rows use none below N (palisade-auth reindex does it); there is no --force",
    )
    subjects = commands.add_parser(
        "subjects", help="data subjects' keys (crypto-shredding)"
    ).add_subparsers(dest="subjects_command", required=True)
    shred = subjects.add_parser(
        "shred",
        help="destroy a subject's secret: its ciphertexts fail with subject_erased from now on "
        "(exit 0 once shredded, now or before; 1 if refused)",
    )
    shred.add_argument("subject", metavar="SUBJECT", help='e.g. "user:usr_…" or "visitor:vis_…"')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    harden_process()
    settings = CryptoSettings()
    configure_logging(SERVICE_NAME, settings.log_level)
    try:
        if args.command == "keys":
            return _keys_command(args, settings)
        if args.command == "subjects":
            return _subjects_command(args, settings)
        if args.command == "migrate":
            asyncio.run(_migrate(settings))
            return 0
        event_loop.run(_serve(settings), settings.event_loop)
        return 0
    except PalisadeError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
