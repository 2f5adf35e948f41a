"""The witness file: every checkpoint the service signs, appended outside the database.

Someone with write access to the database can delete a chain's last events together with every
checkpoint signed over them; what is left is consistent, and nothing in the database can show
the cut. A copy of the signed checkpoints kept elsewhere can: `palisade-audit verify` checks
that each chain still holds the prefix of its latest witnessed checkpoint (the same size ending
in the same head). The file lives beside the signing key by default (PALISADE_AUDIT_WITNESS_FILE
elsewhere), one JSON line per checkpoint exactly as GET /v1/audit/checkpoint serves it, and is
only ever appended to.

The service is a witness of its own, too: before it signs a checkpoint (periodic, on demand or
at a purge) it checks that the chain still holds the latest witnessed checkpoint's head at its
size, and refuses otherwise. Without that, a chain cut and then grown again would get a new
checkpoint over the new events, and that larger one would become the latest witnessed, hiding
the cut (or a purge would move the chain's start past the evidence). So the latest witnessed
checkpoint of each chain always extends every earlier one, and comparing with it is enough.

The file is only as good as its place: an attacker who can also rewrite it (or who acts before
the next checkpoint is signed) gets past it; a SIEM's copy of GET /v1/audit/checkpoint
(`verify --checkpoint`) is the witness that attacker does not hold. Appending is best effort: a
checkpoint is signed and stored even if the file cannot be written (logged, and counted in
palisade_audit_witness_failures_total), since refusing checkpoints would leave the chain with
less protection, not more.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from palisade.audit.chain.walk import SignatureCheck
from palisade.audit.messages import CheckpointTextInvalid, checkpoint_from_json, checkpoint_json
from palisade.audit.metrics import AuditMetrics
from palisade.audit.model import CheckpointRecord

log = logging.getLogger("palisade.audit.witness")

ORIGIN = "witness file"
_MODE = 0o600


class WitnessFileInvalid(Exception):
    """The witness file cannot be read (the message says why, naming no secret)."""


@dataclass
class Witnessed:
    """The latest validly signed witnessed checkpoint of each chain, the lines that were no
    checkpoint, and the checkpoints whose signature failed (neither counts as witnessed: a line
    someone added to the file must not stand in for, or hide, a signed one)."""

    signature_ok: SignatureCheck
    latest: dict[str, CheckpointRecord] = field(default_factory=dict)
    unreadable: list[int] = field(default_factory=list)  # line numbers
    unsigned: list[CheckpointRecord] = field(default_factory=list)

    def add(self, lines: Iterable[bytes], first_number: int) -> None:
        for number, raw in enumerate(lines, start=first_number):
            if not raw.strip():
                continue
            try:
                record = checkpoint_from_json(raw.decode(), origin=ORIGIN)
            except (CheckpointTextInvalid, UnicodeDecodeError):
                # A torn append (a crash mid-write) or an edit: either way no checkpoint. It is
                # reported, and the lines before and after still count.
                self.unreadable.append(number)
                continue
            if not self.signature_ok(record):
                self.unsigned.append(record)
                continue
            kept = self.latest.get(record.workspace_id)
            if kept is None or (record.size, record.signed_at) >= (kept.size, kept.signed_at):
                self.latest[record.workspace_id] = record


def read_witness(path: Path, signature_ok: SignatureCheck) -> Witnessed:
    """The latest checkpoint of each chain in the file (the largest size, the newest of
    equals): a chain that holds it holds every earlier one's prefix too, since its head covers
    them all through the links."""
    witnessed = Witnessed(signature_ok)
    try:
        with path.open("rb") as file:
            witnessed.add(file, 1)  # streamed: the file only grows
    except OSError as exc:
        raise WitnessFileInvalid(f"cannot read the witness file {path}: {exc.strerror}") from None
    return witnessed


class WitnessFile:
    """The service's side: appends each signed checkpoint, and knows the latest of each chain
    (read once, then only what was appended since, by any replica sharing the file)."""

    def __init__(self, path: Path, *, metrics: AuditMetrics, signature_ok: SignatureCheck) -> None:
        self.path = path
        self._metrics = metrics
        self._signature_ok = signature_ok
        self._witnessed = Witnessed(signature_ok)
        self._offset = 0  # bytes of the file read so far (whole lines only)
        self._lines = 0
        self._reading = asyncio.Lock()

    async def latest(self, workspace_id: str) -> CheckpointRecord | None:
        """The chain's latest witnessed checkpoint, with whatever was appended since the last
        look (a file that cannot be read: what was known, logged)."""
        async with self._reading:
            try:
                await asyncio.to_thread(self._catch_up)
            except OSError as exc:
                log.error(
                    "cannot read the witness file",
                    extra={"path": str(self.path), "reason": exc.strerror},
                )
        return self._witnessed.latest.get(workspace_id)

    def _catch_up(self) -> None:
        try:
            with self.path.open("rb") as file:
                if os.fstat(file.fileno()).st_size < self._offset:  # replaced by a shorter one
                    self._witnessed = Witnessed(self._signature_ok)
                    self._offset = self._lines = 0
                file.seek(self._offset)
                tail = file.read()
        except FileNotFoundError:
            return  # nothing witnessed yet
        complete = tail[: tail.rfind(b"\n") + 1]  # a line still being written waits
        lines = complete.splitlines(keepends=True)
        self._witnessed.add(lines, self._lines + 1)
        self._offset += len(complete)
        self._lines += len(lines)

    async def record(self, checkpoint: CheckpointRecord) -> None:
        line = (checkpoint_json(checkpoint) + "\n").encode()
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            self._metrics.witness_failures.inc()
            log.error(
                "could not append a signed checkpoint to the witness file",
                extra={"path": str(self.path), "reason": exc.strerror},
            )

    def _append(self, line: bytes) -> None:
        # One write of one line with O_APPEND: replicas sharing the file never interleave
        # within a line. After a torn append (a crash mid-write) the file does not end in a
        # newline; this line then starts on a fresh one, so only the torn one is lost.
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, _MODE)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
