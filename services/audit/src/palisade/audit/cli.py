"""palisade-audit: run the audit service (`serve`, the default), or check and export its log.

palisade-audit serve                          run the gRPC service (default)
palisade-audit migrate                        apply database migrations and exit
palisade-audit verify [--workspace ID|--system] [--public-keys FILE] [--checkpoint FILE ...]
                      [--witness FILE|--no-witness]
                                              recompute every chain (or one) from its start or
                                              signed retention anchor and check every checkpoint,
                                              stored, in the witness file or given; exit 0 if
                                              intact, 1 listing what broke (one JSON object a
                                              line: workspace, seq, what, detail); what it cannot
                                              detect: `palisade-audit verify --help`
palisade-audit export --workspace ID [--format jsonl|ocsf] [--since T] [--until T]
                                              a workspace's log, one JSON object a line (PII
                                              decrypted through crypto; erased subjects empty)
palisade-audit keys init                      create the signing key and page-token key files
                                              where the settings put them, if missing (for the
                                              Kubernetes Secrets; the embedded default does it
                                              on first start)
palisade-audit keys list                      the checkpoint signing keys (public halves)
palisade-audit keys rotate                    a new signing key; earlier public keys are kept
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from palisade.audit.config import SERVICE_NAME, AuditSettings
from palisade.audit.store import AuditStore
from palisade.common import event_loop
from palisade.common.clock import Clock, SystemClock
from palisade.common.logs import configure_logging
from palisade.common.secret_files import harden_process

if TYPE_CHECKING:  # the commands import what they use when they run
    from palisade.audit.chain.verify import Problem
    from palisade.audit.chain.walk import SignatureChecks
    from palisade.audit.model import CheckpointRecord

SYSTEM_CHAIN_NAME = "system"
VERIFY_LIMITS = """\
What verify can and cannot detect:
  From the database alone it catches any edited, deleted, inserted or reordered event, a
  stored checkpoint that no longer matches or whose signature fails, and a chain that starts
  later than event 1 without a retention anchor signed by the purge job. It cannot see events
  cut off the END of a chain together with every checkpoint signed over them, nor events
  appended after the last checkpoint by someone with database access: what is left is
  consistent. Only a checkpoint kept outside the database shows that: the witness file (every
  checkpoint the service signed, written beside the signing key, compared by default when it
  exists) and --checkpoint FILE (one a client or SIEM fetched earlier). Each is only as good as
  its keeper: an attacker who can also rewrite the witness file gets past it, and nothing
  protects events newer than the newest checkpoint kept elsewhere. After restoring the database
  from a backup, the witness rightly reports the events lost since the backup.
"""


async def _serve(settings: AuditSettings) -> None:
    from palisade.audit.server import serve_audit
    from palisade.common.grpc_server import wait_for_termination

    async with serve_audit(settings):
        await wait_for_termination()


@asynccontextmanager
async def _store(settings: AuditSettings, *, migrate: bool) -> AsyncIterator[AuditStore]:
    from palisade.audit.tables import MIGRATIONS_PACKAGE
    from palisade.common.migrations import service_database

    async with service_database(
        settings.database_url,
        data_dir=settings.data_dir,
        service=SERVICE_NAME,
        migrations_package=MIGRATIONS_PACKAGE if migrate else None,
    ) as engine:
        yield AuditStore(engine=engine)


class PublicKeysInvalid(Exception):
    pass


def _public_keys(path: Path) -> Callable[[str, bytes, bytes], bool]:
    """A verify function over a JSON file of public keys as GET /v1/audit/keys serves them."""
    from palisade.audit.checkpoints.signing_keys import ALGORITHM, VerifyingKey, key_id_of

    try:
        body = json.loads(path.read_bytes())
        keys = {}
        for entry in body["keys"]:
            public = base64.b64decode(entry["publicKey"], validate=True)
            if entry["algorithm"] != ALGORITHM or key_id_of(public) != entry["keyId"]:
                raise PublicKeysInvalid(f"{path}: a key is not an Ed25519 key of its id")
            keys[entry["keyId"]] = VerifyingKey(entry["keyId"], public, datetime.now(UTC))
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise PublicKeysInvalid(
            f"{path}: not a list of public keys ({type(exc).__name__})"
        ) from None

    def verify(key_id: str, signature: bytes, message: bytes) -> bool:
        key = keys.get(key_id)
        return key is not None and key.verify(signature, message)

    return verify


class CheckpointFileInvalid(Exception):
    pass


def _given_checkpoints(path: Path) -> list[CheckpointRecord]:
    """The checkpoints in a file: one JSON object as GET /v1/audit/checkpoint serves it (as
    saved by a client or a SIEM), or several, one a line."""
    from palisade.audit.messages import CheckpointTextInvalid, checkpoint_from_json

    origin = f"from {path}"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointFileInvalid(f"{path}: cannot be read ({type(exc).__name__})") from None
    try:
        return [checkpoint_from_json(text, origin=origin)]
    except CheckpointTextInvalid:
        pass  # not one object: JSON lines?
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.append(checkpoint_from_json(line, origin=origin))
        except CheckpointTextInvalid as exc:
            raise CheckpointFileInvalid(f"{path} line {number}: {exc}") from None
    if not found:
        raise CheckpointFileInvalid(f"{path}: holds no checkpoint")
    return found


def _witnessed(
    settings: AuditSettings,
    witness: Path | None,
    use_witness: bool,
    signatures: SignatureChecks,
    out: TextIO,
) -> list[CheckpointRecord]:
    """The latest witnessed checkpoint of each chain, and the witness lines whose signature
    fails (someone wrote them into the file: verify_chain reports them unless they are copies
    of stored checkpoints, whose own signature failure it reports)."""
    from palisade.audit.checkpoints.witness import WitnessFileInvalid, read_witness

    if not use_witness:
        out.write("witness: not used (--no-witness)\n")
        return []
    path = witness or settings.resolved_witness_file()
    if witness is None and not path.exists():
        out.write(
            f"witness: no witness file at {path}; events cut off the end of a chain together "
            "with their checkpoints cannot be detected without one (or --checkpoint)\n"
        )
        return []
    try:
        found = read_witness(path, signatures.checkpoint)
    except WitnessFileInvalid as exc:
        raise CheckpointFileInvalid(str(exc)) from None
    out.write(f"witness: the latest checkpoint of {len(found.latest)} chain(s) from {path}\n")
    if found.unreadable:
        shown = ", ".join(str(n) for n in found.unreadable[:10])
        out.write(
            f"witness: {len(found.unreadable)} line(s) of {path} are no checkpoint and were "
            f"skipped (line {shown}{', ...' if len(found.unreadable) > 10 else ''}): a torn "
            "append after a crash, or an edit\n"
        )
    return [*found.latest.values(), *found.unsigned]


async def verify(
    settings: AuditSettings,
    workspace: str | None,
    public_keys: Path | None,
    out: TextIO,
    *,
    checkpoint_files: Sequence[Path] = (),
    witness: Path | None = None,
    use_witness: bool = True,
) -> int:
    from palisade.audit.chain.walk import signature_checks, verify_chain
    from palisade.audit.checkpoints.signing_keys import SigningKeysInvalid, read_signing_keys

    try:
        check = (
            _public_keys(public_keys)
            if public_keys is not None
            else read_signing_keys(settings.resolved_signing_key_file()).verify
        )
        signatures = signature_checks(check)
        given = [c for path in checkpoint_files for c in _given_checkpoints(path)]
        if workspace is not None and any(c.workspace_id != workspace for c in given):
            raise CheckpointFileInvalid("a --checkpoint is of another chain than the one verified")
        outside = given + _witnessed(settings, witness, use_witness, signatures, out)
    except (SigningKeysInvalid, PublicKeysInvalid, CheckpointFileInvalid) as exc:
        out.write(f"error: {exc}\n")
        return 2
    async with _store(settings, migrate=False) as store:
        if workspace is None:
            async with store.transaction() as tx:
                names = {c.workspace_id for c in await tx.chains()}
                names |= await tx.workspaces_with_events()
            # A chain known only from outside (deleted whole from the database) is checked too.
            names |= {c.workspace_id for c in outside}
            chains = sorted(names)
        else:
            chains = [workspace]
        problems: list[Problem] = []
        for name in chains:
            problems.extend(await verify_chain(store, name, signatures=signatures, outside=outside))
    for problem in problems:
        out.write(
            json.dumps(
                {
                    "workspace": problem.workspace_id or SYSTEM_CHAIN_NAME,
                    "seq": problem.seq,
                    "what": problem.what,
                    "detail": problem.detail,
                }
            )
            + "\n"
        )
    if problems:
        out.write(f"verify: {len(problems)} problem(s) in {len(chains)} chain(s)\n")
        return 1
    out.write(f"verify: {len(chains)} chain(s) intact\n")
    return 0


def _moment(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def export(
    settings: AuditSettings,
    workspace: str,
    output_format: str,
    since: datetime | None,
    until: datetime | None,
    out: TextIO,
    clock: Clock,
) -> int:
    from palisade.audit.export import ExportRange, export_events, jsonl_record, ocsf_record
    from palisade.audit.pii import PiiVault
    from palisade.common.caller import AssertionSigner
    from palisade.common.crypto_client import CryptoClient
    from palisade.common.edge_keys import open_service_keys
    from palisade.common.errors import Unavailable
    from palisade.common.geo import NullLocator
    from palisade.common.grpc_client import ServiceIdentity, insecure_channel

    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp())
    signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=settings.assertion_ttl_seconds)
    channel = insecure_channel(settings.crypto_target)
    try:
        crypto = CryptoClient(
            channel=channel, identity=ServiceIdentity(name=SERVICE_NAME, signer=signer)
        )
        vault = PiiVault(
            crypto=crypto, locator=NullLocator(), batch_items=settings.crypto_batch_items
        )
        record = ocsf_record if output_format == "ocsf" else jsonl_record
        async with _store(settings, migrate=False) as store:
            async for event, pii in export_events(
                store, vault, workspace, ExportRange(since, until)
            ):
                out.write(json.dumps(record(event, pii), sort_keys=True) + "\n")
    except Unavailable:
        sys.stderr.write("error: the crypto service is unavailable\n")
        return 1
    finally:
        await channel.close(None)
    return 0


def init_keys(settings: AuditSettings, out: TextIO, clock: Clock) -> int:
    from palisade.audit.checkpoints.signing_keys import create_signing_keys
    from palisade.common.page_tokens import load_page_token_key

    signing = settings.resolved_signing_key_file()
    made = create_signing_keys(signing, clock.now())
    out.write(f"{'created' if made else 'kept'} {signing}\n")
    tokens = settings.resolved_page_token_key_file()
    existed = tokens.exists()
    load_page_token_key(tokens, create=True)
    out.write(f"{'kept' if existed else 'created'} {tokens}\n")
    return 0


def list_keys(settings: AuditSettings, out: TextIO) -> int:
    from palisade.audit.checkpoints.signing_keys import ALGORITHM, read_signing_keys

    keys = read_signing_keys(settings.resolved_signing_key_file())
    for key in sorted(keys.keys.values(), key=lambda k: (k.created_at, k.key_id)):
        out.write(
            json.dumps(
                {
                    "keyId": key.key_id,
                    "algorithm": ALGORITHM,
                    "publicKey": base64.b64encode(key.public_key).decode(),
                    "createdAt": key.created_at.isoformat(),
                    "current": key.key_id == keys.current,
                }
            )
            + "\n"
        )
    return 0


def rotate_key(settings: AuditSettings, out: TextIO, clock: Clock) -> int:
    from palisade.audit.checkpoints.signing_keys import rotate_signing_keys

    rotated = rotate_signing_keys(settings.resolved_signing_key_file(), clock.now())
    out.write(f"new signing key {rotated.current}; {len(rotated.keys) - 1} earlier key(s) kept\n")
    return 0


def _chain_name(args: argparse.Namespace) -> str | None:
    if args.system:
        return ""
    return str(args.workspace) if args.workspace is not None else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palisade-audit", description="Palisade security log")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service (default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    check = commands.add_parser(
        "verify",
        help="verify every chain (or one) and its checkpoints",
        description="Recompute every chain from its start or signed retention anchor, check "
        "every checkpoint stored for it and the ones kept outside the database. Exit 0 if "
        "intact, 1 listing what broke (one JSON object a line), 2 if it could not run.",
        epilog=VERIFY_LIMITS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = check.add_mutually_exclusive_group()
    which.add_argument("--workspace", metavar="ID")
    which.add_argument("--system", action="store_true", help="the chain of no workspace")
    check.add_argument(
        "--public-keys",
        type=Path,
        metavar="FILE",
        help="public keys as GET /v1/audit/keys serves them (default: the signing key file)",
    )
    check.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        metavar="FILE",
        help="a checkpoint as GET /v1/audit/checkpoint served it (kept by a client or SIEM; "
        "one JSON object, or JSON lines): the chain must still hold its prefix (repeatable)",
    )
    witness = check.add_mutually_exclusive_group()
    witness.add_argument(
        "--witness",
        type=Path,
        metavar="FILE",
        help="the witness file to compare with (default: the service's, "
        "PALISADE_AUDIT_WITNESS_FILE, when it exists)",
    )
    witness.add_argument("--no-witness", action="store_true", help="compare with no witness file")
    dump = commands.add_parser("export", help="export a workspace's log")
    which = dump.add_mutually_exclusive_group(required=True)
    which.add_argument("--workspace", metavar="ID")
    which.add_argument("--system", action="store_true", help="the chain of no workspace")
    dump.add_argument("--format", choices=("jsonl", "ocsf"), default="jsonl")
    dump.add_argument("--since", metavar="RFC3339", help="events at or after this moment")
    dump.add_argument("--until", metavar="RFC3339", help="events before this moment")
    keys = commands.add_parser("keys", help="checkpoint signing keys").add_subparsers(
        dest="action", required=True
    )
    keys.add_parser("init", help="create the key files if missing (mode 0600)")
    keys.add_parser("list", help="the public keys, one JSON object a line")
    keys.add_parser("rotate", help="make a new current key (earlier public keys stay)")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    settings: AuditSettings | None = None,
    out: TextIO | None = None,
    clock: Clock | None = None,
) -> int:
    """The console script (settings, out and clock: for tests)."""
    parser = _parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    clock = clock or SystemClock()
    command = args.command or "serve"
    if command == "serve":
        harden_process()
    settings = settings or AuditSettings()
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
    if command == "verify":
        return asyncio.run(
            verify(
                settings,
                _chain_name(args),
                args.public_keys,
                out,
                checkpoint_files=args.checkpoint or (),
                witness=args.witness,
                use_witness=not args.no_witness,
            )
        )
    if command == "export":
        try:
            since, until = _moment(args.since), _moment(args.until)
        except ValueError:
            parser.error("--since and --until take RFC 3339 moments")
        if since is not None and until is not None and since > until:
            parser.error("--since is after --until")
        chain = _chain_name(args)
        assert chain is not None  # the group is required
        return asyncio.run(export(settings, chain, args.format, since, until, out, clock))
    if args.action == "init":
        return init_keys(settings, out, clock)
    if args.action == "list":
        return list_keys(settings, out)
    return rotate_key(settings, out, clock)


if __name__ == "__main__":
    sys.exit(main())
