"""Per-edge signing keys for caller assertions: the files that hold them, and their rotation.

Two kinds of file, both JSON, both 0600:

- the master file (`<data_dir>/keys/edges.json`, or wherever the operator keeps it): every
  edge's keys. Only `palisade-keys` and the embedded default read it; no service needs it.
- one service file per service (`<data_dir>/keys/<service>.json`; in Kubernetes that
  service's own Secret): only the keys of the edges the service is on, written from the
  master. A service refuses a file holding the key of an edge it is not on.

An edge has one or more keys by kid. Each key has a `not_before`: an issuer signs with the
newest key whose not_before has passed, and a verifier accepts every key the file lists. That
gives rotation with overlap: `rotate` adds a key (optionally activating later, so that every
verifier has it before any issuer uses it), and the old kid keeps verifying until `retire`.
Services re-read their file when it changes (checked at most once a second, and at once when
an unknown kid arrives), so rotation needs no restart.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palisade.common.edges import EDGES, Edge, edges_of
from palisade.common.secret_files import (
    FileSignature,
    check_secret_file,
    create_exclusive,
    file_signature,
    locked,
    replace_atomically,
)
from palisade.common.settings import CommonSettings

log = logging.getLogger("palisade.edge_keys")

MASTER_FORMAT = "palisade-edge-keys/1"
SERVICE_FORMAT = "palisade-service-keys/1"
KEY_BYTES = 32
_CHECK_INTERVAL_SECONDS = 1.0  # how often a service looks for a changed key file
_FORCED_CHECK_INTERVAL_SECONDS = 0.05  # at most this often on an unknown kid


class EdgeKeyError(ValueError):
    """A key file is malformed, or holds what it must not."""


@dataclass(frozen=True)
class EdgeKey:
    kid: str
    secret: bytes = field(repr=False)
    created_at: int
    not_before: int  # issuers sign with it from then on; verifiers accept it at once


@dataclass(frozen=True)
class EdgeKeys:
    """One edge's keys, newest activation last."""

    keys: tuple[EdgeKey, ...]
    by_kid: Mapping[str, bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.keys, key=lambda k: (k.not_before, k.created_at, k.kid)))
        object.__setattr__(self, "keys", ordered)
        object.__setattr__(self, "by_kid", {k.kid: k.secret for k in ordered})
        if len(self.by_kid) != len(ordered):
            raise EdgeKeyError("two keys share a kid")
        if any(len(k.secret) < KEY_BYTES for k in ordered):
            raise EdgeKeyError(f"edge keys must be at least {KEY_BYTES} bytes")

    def signing_key(self, now: float) -> EdgeKey | None:
        """The key an issuer signs with now: the newest already active."""
        for key in reversed(self.keys):
            if key.not_before <= now:
                return key
        return None

    def with_new_key(self, now: int, delay_seconds: int = 0) -> EdgeKeys:
        return EdgeKeys((*self.keys, new_key(now, now + delay_seconds)))

    def without(self, kid: str) -> EdgeKeys:
        return EdgeKeys(tuple(k for k in self.keys if k.kid != kid))


def new_key(created_at: int, not_before: int | None = None) -> EdgeKey:
    return EdgeKey(
        kid=secrets.token_hex(4),
        secret=secrets.token_bytes(KEY_BYTES),
        created_at=created_at,
        not_before=created_at if not_before is None else not_before,
    )


@dataclass(frozen=True)
class KeyDocument:
    """The content of a key file: edges by name; `service` is None for the master file."""

    edges: Mapping[str, EdgeKeys]
    service: str | None = None

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {"format": MASTER_FORMAT if self.service is None else SERVICE_FORMAT}
        if self.service is not None:
            doc["service"] = self.service
        doc["edges"] = {
            name: [
                {
                    "kid": k.kid,
                    "secret": base64.b64encode(k.secret).decode("ascii"),
                    "created_at": k.created_at,
                    "not_before": k.not_before,
                }
                for k in keys.keys
            ]
            for name, keys in sorted(self.edges.items())
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> KeyDocument:
        try:
            doc = json.loads(raw)
            if doc.get("format") not in (MASTER_FORMAT, SERVICE_FORMAT):
                raise EdgeKeyError("not a Palisade edge key file")
            service = doc.get("service") if doc["format"] == SERVICE_FORMAT else None
            if doc["format"] == SERVICE_FORMAT and not isinstance(service, str):
                raise EdgeKeyError("a service key file must name its service")
            edges = {
                str(name): EdgeKeys(
                    tuple(
                        EdgeKey(
                            kid=str(k["kid"]),
                            secret=base64.b64decode(k["secret"], validate=True),
                            created_at=int(k["created_at"]),
                            not_before=int(k["not_before"]),
                        )
                        for k in keys
                    )
                )
                for name, keys in doc["edges"].items()
            }
        except EdgeKeyError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Never the exception's text: it could quote key material.
            raise EdgeKeyError(f"malformed edge key file ({type(exc).__name__})") from None
        return cls(edges=edges, service=service)

    @classmethod
    def generate(cls, edges: Iterable[Edge] = EDGES, now: int | None = None) -> KeyDocument:
        """A fresh master with one key per edge, in memory (tests and benchmarks)."""
        return cls({}).with_missing_edges(edges, int(time.time()) if now is None else now)

    def with_missing_edges(self, edges: Iterable[Edge], now: int) -> KeyDocument:
        """This document plus a first key for every listed edge it lacks."""
        # An edge's first key signs at once (not_before 0): nothing older could be in use.
        missing = [e for e in edges if e.name not in self.edges]
        added = {e.name: EdgeKeys((new_key(now, not_before=0),)) for e in missing}
        return KeyDocument({**self.edges, **added}, self.service) if added else self

    def for_service(self, service: str, edges: Sequence[Edge] = EDGES) -> KeyDocument:
        """The service file's content: only the edges this service is on."""
        names = {e.name for e in edges_of(service, edges)}
        return KeyDocument({n: k for n, k in self.edges.items() if n in names}, service)


@dataclass(frozen=True)
class ServiceKeys:
    """One service's view of its key file: what it may sign and whom it may believe."""

    service: str
    signing: Mapping[str, EdgeKeys]  # by audience, for edges where this service is the issuer
    verifying: Mapping[str, tuple[Edge, EdgeKeys]]  # by issuer, where it is the audience

    @classmethod
    def from_document(
        cls, document: KeyDocument, service: str, edges: Sequence[Edge] = EDGES
    ) -> ServiceKeys:
        if document.service != service:
            raise EdgeKeyError(f"the key file is not {service}'s")
        mine = {e.name: e for e in edges_of(service, edges)}
        signing: dict[str, EdgeKeys] = {}
        verifying: dict[str, tuple[Edge, EdgeKeys]] = {}
        for name, keys in document.edges.items():
            issuer, _, audience = name.partition(":")
            if service not in (issuer, audience):
                raise EdgeKeyError(f"{service}'s key file holds the key of edge {name}")
            edge = mine.get(name)
            if edge is None:
                continue  # an edge no longer listed: trusted by nobody
            if edge.issuer == service:
                signing[edge.audience] = keys
            if edge.audience == service:
                verifying[edge.issuer] = (edge, keys)
        return cls(service, signing, verifying)

    @classmethod
    def generate(cls, service: str, edges: Sequence[Edge] = EDGES) -> ServiceKeys:
        """Fresh keys in memory (tests and benchmarks that need no peer)."""
        document = KeyDocument.generate(edges_of(service, edges))
        return cls.from_document(document.for_service(service, edges), service, edges)


class KeySource:
    """Where a signer or verifier gets the current keys: a file, re-read when it changes."""

    def __init__(
        self,
        *,
        service: str,
        path: Path | None = None,
        keys: ServiceKeys | None = None,
        edges: Sequence[Edge] = EDGES,
    ) -> None:
        if (path is None) == (keys is None):
            raise ValueError("give a key file or fixed keys")
        self.service = service
        self._path = path
        self._edges = tuple(edges)
        self._lock = threading.Lock()
        self._stamp: FileSignature | None = None
        self._next_check = 0.0
        self._last_forced = 0.0
        if keys is not None:
            self._keys = keys
        else:
            self._keys = self._read()

    @classmethod
    def fixed(cls, keys: ServiceKeys) -> KeySource:
        return cls(service=keys.service, keys=keys)

    @classmethod
    def from_master(
        cls, master: KeyDocument, service: str, edges: Sequence[Edge] = EDGES
    ) -> KeySource:
        """Fixed keys: the service's share of a master document (tests and benchmarks)."""
        keys = ServiceKeys.from_document(master.for_service(service, edges), service, edges)
        return cls(service=service, keys=keys, edges=edges)

    @property
    def edges(self) -> tuple[Edge, ...]:
        return self._edges

    @property
    def current(self) -> ServiceKeys:
        """The keys; looks for a changed file at most once a second (a monotonic compare)."""
        if self._path is not None and time.monotonic() >= self._next_check:
            self._reload_if_changed()
        return self._keys

    def refresh(self) -> ServiceKeys:
        """Re-reads a changed file now (an unknown kid arrived), at most 20 times a second."""
        now = time.monotonic()
        if self._path is not None and now - self._last_forced >= _FORCED_CHECK_INTERVAL_SECONDS:
            self._last_forced = now
            self._reload_if_changed()
        return self._keys

    def _read(self) -> ServiceKeys:
        assert self._path is not None
        check_secret_file(self._path)
        stamp = file_signature(self._path)
        keys = ServiceKeys.from_document(
            KeyDocument.from_json(self._path.read_bytes()), self.service, self._edges
        )
        self._stamp = stamp
        self._next_check = time.monotonic() + _CHECK_INTERVAL_SECONDS
        return keys

    def _reload_if_changed(self) -> None:
        assert self._path is not None  # only file-backed sources reload
        with self._lock:
            self._next_check = time.monotonic() + _CHECK_INTERVAL_SECONDS
            try:
                if file_signature(self._path) == self._stamp:
                    return
                self._keys = self._read()
                log.info("reloaded the internal signing keys", extra={"service": self.service})
            except (OSError, EdgeKeyError) as exc:
                # Keep the keys we have: a half-made edit must not take the service down.
                log.error(
                    "internal signing key file is unusable; keeping the previous keys",
                    extra={"service": self.service, "error": type(exc).__name__},
                )


# -- files ----------------------------------------------------------------------------------


def read_document(path: Path) -> KeyDocument:
    check_secret_file(path)
    return KeyDocument.from_json(path.read_bytes())


def write_document(path: Path, document: KeyDocument) -> None:
    """Writes path (0600) unless it already holds exactly this: a rewrite would reload."""
    content = document.to_json()
    if path.exists() and path.read_bytes() == content:
        return
    if not create_exclusive(path, content):
        replace_atomically(path, content)


def write_service_files(
    master: KeyDocument,
    keys_dir: Path,
    services: Iterable[str],
    edges: Sequence[Edge] = EDGES,
) -> list[Path]:
    """Writes each named service's file from the master where it differs; returns those."""
    written = []
    for service in services:
        path = keys_dir / f"{service}.json"
        content = master.for_service(service, edges).to_json()
        if path.exists() and path.read_bytes() == content:
            continue
        if not create_exclusive(path, content):
            replace_atomically(path, content)
        written.append(path)
    return written


def sync_from_master(
    *,
    master_path: Path,
    service_path: Path,
    service: str,
    now: int,
    edges: Sequence[Edge] = EDGES,
) -> None:
    """The embedded default: every listed edge gets a key in the master (created on the first
    run), and this service's file is (re)written from it. Locked, so services starting at
    once agree on each edge's key."""
    with locked(master_path):
        master = read_document(master_path) if master_path.exists() else KeyDocument({})
        if master.service is not None:
            raise EdgeKeyError(f"{master_path} is a service key file, not the master")
        completed = master.with_missing_edges(edges, now)
        if completed is not master or not master_path.exists():
            write_document(master_path, completed)
        keys_dir = service_path.parent
        if service_path == keys_dir / f"{service}.json":
            write_service_files(completed, keys_dir, [service], edges)
        else:  # a file named by the operator
            write_document(service_path, completed.for_service(service, edges))


def open_service_keys(
    settings: CommonSettings, service: str, *, now: float, edges: Sequence[Edge] = EDGES
) -> KeySource:
    """A service's key source, as its composition root builds it.

    With create_missing_keys (the embedded default) the service's file is first written from
    the master file, which gets any edge it lacks: `make run` on a fresh machine just works.
    Otherwise (Kubernetes) the file is the mounted Secret, used as it is.
    """
    path = settings.resolved_internal_keys_file(service)
    if settings.create_missing_keys:
        sync_from_master(
            master_path=settings.resolved_edge_keys_master_file(),
            service_path=path,
            service=service,
            now=int(now),
            edges=edges,
        )
    return KeySource(service=service, path=path, edges=edges)
