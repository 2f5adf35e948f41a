"""`palisade-keys`: the operator's tool for the per-edge internal signing keys.

    palisade-keys init                      every listed edge gets a key; service files written
    palisade-keys rotate gateway:auth [--delay 120]
                                            a new key for one edge (signing after the delay)
    palisade-keys retire gateway:auth KID   the old key stops verifying
    palisade-keys status                    edges, kids and dates; which files are current

It works on a folder (default: <data_dir>/keys) holding the master file `edges.json` and one
`<service>.json` per service, each written with only that service's edges. Running services
pick up a changed file within a second. In Kubernetes, run it on the operator's machine and
load each service file into that service's Secret (see deploy/k8s/README.md); use --delay
longer than the Secret propagation time, so every verifier has the new key before its issuer
signs with it. Key material is never printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from palisade.common.edge_keys import (
    EdgeKeyError,
    KeyDocument,
    read_document,
    write_document,
    write_service_files,
)
from palisade.common.edges import EDGES, parse_edge_name, services_of
from palisade.common.secret_files import harden_process, locked
from palisade.common.settings import CommonSettings


def _when(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class _Folder:
    def __init__(self, keys_dir: Path) -> None:
        self.keys_dir = keys_dir
        self.master = keys_dir / "edges.json"

    def read(self) -> KeyDocument:
        if not self.master.exists():
            raise EdgeKeyError(f"{self.master} does not exist: run `palisade-keys init` first")
        return read_document(self.master)

    def save(self, document: KeyDocument, services: list[str]) -> None:
        write_document(self.master, document)
        for path in write_service_files(document, self.keys_dir, services):
            print(f"wrote {path}")


def _init(folder: _Folder, now: int) -> None:
    with locked(folder.master):
        document = folder.read() if folder.master.exists() else KeyDocument({})
        completed = document.with_missing_edges(EDGES, now)
        for edge in EDGES:
            if edge.name not in document.edges:
                print(f"created a key for {edge.name}")
        folder.save(completed, services_of())


def _rotate(folder: _Folder, edge_name: str, delay: int, now: int) -> None:
    edge = parse_edge_name(edge_name)
    with locked(folder.master):
        document = folder.read()
        if edge.name not in document.edges:
            raise EdgeKeyError(f"{edge.name} has no keys yet: run `palisade-keys init`")
        keys = document.edges[edge.name].with_new_key(now, delay)
        new = keys.keys[-1]
        folder.save(KeyDocument({**document.edges, edge.name: keys}), [edge.issuer, edge.audience])
    print(f"{edge.name}: new kid {new.kid}, signing from {_when(new.not_before)}")


def _retire(folder: _Folder, edge_name: str, kid: str, now: int) -> None:
    edge = parse_edge_name(edge_name)
    with locked(folder.master):
        document = folder.read()
        keys = document.edges.get(edge.name)
        if keys is None or kid not in keys.by_kid:
            raise EdgeKeyError(f"{edge.name} has no key {kid}")
        signing = keys.signing_key(now)
        if signing is not None and signing.kid == kid:
            raise EdgeKeyError(f"{kid} is the key {edge.name} signs with: rotate first")
        remaining = keys.without(kid)
        if remaining.signing_key(now) is None:
            raise EdgeKeyError(f"{edge.name} would have no active key left")
        edges = {**document.edges, edge.name: remaining}
        folder.save(KeyDocument(edges), [edge.issuer, edge.audience])
    print(f"{edge.name}: retired kid {kid}")


def _status(folder: _Folder, now: int) -> None:
    document = folder.read()
    for edge in EDGES:
        keys = document.edges.get(edge.name)
        if keys is None:
            print(f"{edge.name}: no keys (run `palisade-keys init`)")
            continue
        signing = keys.signing_key(now)
        print(f"{edge.name}:")
        for key in keys.keys:
            if signing is not None and key.kid == signing.kid:
                state = "signing"
            elif key.not_before > now:
                state = f"verifies; signing from {_when(key.not_before)}"
            else:
                state = "verifies only (retire when no caller uses it)"
            print(f"  {key.kid}  created {_when(key.created_at)}  {state}")
    for service in services_of():
        path = folder.keys_dir / f"{service}.json"
        expected = document.for_service(service).to_json()
        if not path.exists():
            state = "missing"
        elif path.read_bytes() == expected:
            state = "current"
        else:
            state = "differs from the master (run `palisade-keys init`)"
        print(f"file {path}: {state}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="palisade-keys", description=__doc__.splitlines()[0])
    parser.add_argument("--keys-dir", type=Path, help="default: <data_dir>/keys")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("init", help="create missing edge keys and write every service file")
    rotate = commands.add_parser("rotate", help="add a new key to an edge")
    rotate.add_argument("edge", help='e.g. "gateway:auth"')
    rotate.add_argument("--delay", type=int, default=0, help="seconds before it signs")
    retire = commands.add_parser("retire", help="remove an old key from an edge")
    retire.add_argument("edge")
    retire.add_argument("kid")
    commands.add_parser("status", help="list edges and kids (never key material)")
    args = parser.parse_args(argv)
    harden_process()
    keys_dir = args.keys_dir or CommonSettings().data_dir / "keys"
    folder = _Folder(keys_dir)
    now = int(time.time())
    try:
        if args.command == "init":
            _init(folder, now)
        elif args.command == "rotate":
            if args.delay < 0:
                raise EdgeKeyError("--delay cannot be negative")
            _rotate(folder, args.edge, args.delay, now)
        elif args.command == "retire":
            _retire(folder, args.edge, args.kid, now)
        else:
            _status(folder, now)
    except (EdgeKeyError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
