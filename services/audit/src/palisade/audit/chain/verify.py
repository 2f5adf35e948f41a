"""Verifying a chain: recompute every hash, follow every link, check every checkpoint.

Detection is simple: an event whose stored hash is not the hash of its content, a link to
anything but the previous event's hash, a gap or an extra row, a checkpoint that does not match
the chain at its size or whose signature fails. Saying *what* happened takes a little more: the
walker recovers each row's original position from its own hash (the hash covers the position,
so a row that was moved still hashes correctly at the position it was written for), and then
compares the recovered order with 1, 2, 3, ...:

- a row whose content hashes at no nearby position was edited (it stands where an original row
  is missing) or inserted (it stands between two rows that were adjacent);
- an original position that never shows up was deleted; one that shows up later than rows
  written after it was reordered;
- a row that links to a hash its predecessor no longer has: the predecessor was edited and its
  hash recomputed to match.

Only an attacker who rewrites every hash after the change (no secret is needed for SHA-256)
gets past the links; the signed checkpoints catch that (checkpoint_mismatch), which is why the
service verifies the new part of a chain before it signs the next checkpoint.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from palisade.audit.chain.hashing import event_hash
from palisade.audit.checkpoints.notes import signed_at_text
from palisade.audit.model import CheckpointRecord, StoredEvent

EDITED, DELETED, INSERTED, REORDERED = "edited", "deleted", "inserted", "reordered"
CHECKPOINT_MISMATCH, BAD_SIGNATURE = "checkpoint_mismatch", "bad_signature"
# How far from where it stands a moved row's original position is looked for.
_SEARCH = 16
# Recent original positions remembered for link checks and late (reordered) rows.
_REMEMBERED = 4096


@dataclass(frozen=True, order=True)
class Problem:
    workspace_id: str
    seq: int  # the stored position where it shows (for a deletion: the missing position)
    what: str
    detail: str


def checkpoint_label(checkpoint: CheckpointRecord) -> str:
    """How a problem names a checkpoint: a stored one by its id, one kept outside the
    database by where it came from, its size and when it was signed."""
    if checkpoint.origin:
        return (
            f"checkpoint of size {checkpoint.size} signed "
            f"{signed_at_text(checkpoint.signed_at)} ({checkpoint.origin})"
        )
    return f"checkpoint {checkpoint.id}"


def _original_position(event: StoredEvent) -> int | None:
    """The position the row's hash was computed for: where it stands, or nearby."""
    sealed = event.sealed
    if event_hash(sealed) == event.hash:
        return sealed.seq
    for distance in range(1, _SEARCH + 1):
        for candidate in (sealed.seq - distance, sealed.seq + distance):
            if candidate >= 1 and event_hash(replace(sealed, seq=candidate)) == event.hash:
                return candidate
    return None


class ChainVerifier:
    """Feed a chain's rows in stored order (seq, then id), then finish()."""

    def __init__(
        self,
        workspace_id: str,
        *,
        start_size: int,
        start_head: bytes,
        checkpoints: Sequence[CheckpointRecord] = (),
        signature_ok: Callable[[CheckpointRecord], bool] = lambda _: True,
    ) -> None:
        self.workspace_id = workspace_id
        self.problems: list[Problem] = []
        self.rows = 0
        self._expected = start_size + 1  # the next original position
        self._start_size = start_size
        # original position -> (stored seq, stored hash) of recent rows; the start is known.
        self._hashes: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._hashes[start_size] = (start_size, start_head)
        self._skipped: dict[int, int] = {}  # missing original position -> where it was missed
        self._unplaced: list[StoredEvent] = []  # rows whose content matches no position
        self._last_stored_seq = start_size
        self._last_hash = start_head
        self._checkpoints: dict[int, list[CheckpointRecord]] = {}
        for checkpoint in checkpoints:
            if not signature_ok(checkpoint):
                self._report(checkpoint.size, BAD_SIGNATURE, checkpoint_label(checkpoint))
            elif checkpoint.size > start_size:
                self._checkpoints.setdefault(checkpoint.size, []).append(checkpoint)
            elif checkpoint.size == start_size and checkpoint.head != start_head:
                self._report(checkpoint.size, CHECKPOINT_MISMATCH, checkpoint_label(checkpoint))

    def _report(self, seq: int, what: str, detail: str) -> None:
        self.problems.append(Problem(self.workspace_id, seq, what, detail))

    def feed(self, event: StoredEvent) -> None:
        self.rows += 1
        stored_seq = event.sealed.seq
        self._last_stored_seq, self._last_hash = stored_seq, event.hash
        for checkpoint in self._checkpoints.pop(stored_seq, ()):
            if checkpoint.head != event.hash:
                self._report(stored_seq, CHECKPOINT_MISMATCH, checkpoint_label(checkpoint))
        original = _original_position(event)
        if original is None:
            self._unplaced.append(event)
            return
        self._place_unplaced(original)
        if original < self._expected:
            if self._skipped.pop(original, None) is not None:
                self._report(stored_seq, REORDERED, f"written as event {original}")
                self._remember(original, stored_seq, event.hash)
            else:
                self._report(stored_seq, INSERTED, f"a second copy of event {original}")
            self._check_link(event, original)
            return
        for missing in range(self._expected, original):
            self._skipped[missing] = stored_seq
        self._expected = original + 1
        self._check_link(event, original)
        self._remember(original, stored_seq, event.hash)
        self._settle_skipped(original)

    def _remember(self, original: int, stored_seq: int, digest: bytes) -> None:
        self._hashes[original] = (stored_seq, digest)
        while len(self._hashes) > _REMEMBERED:
            self._hashes.popitem(last=False)

    def _check_link(self, event: StoredEvent, original: int) -> None:
        previous = self._hashes.get(original - 1)
        if previous is None:
            return  # deleted, or out of sight: reported as such
        stored_seq, digest = previous
        if event.sealed.prev_hash != digest:
            if original - 1 == self._start_size:
                self._report(event.sealed.seq, EDITED, "does not link to the chain's start")
            else:
                self._report(
                    stored_seq, EDITED, "its hash changed: the next event links to another"
                )

    def _place_unplaced(self, original: int) -> None:
        """Rows of unrecognisable content before a recognised one: as many as the original
        positions they stand for were edited, any more were inserted, any fewer leave the
        rest deleted."""
        if not self._unplaced:
            return
        gap = list(range(self._expected, original)) if original >= self._expected else []
        for row, position in zip(self._unplaced, gap, strict=False):
            self._report(row.sealed.seq, EDITED, "its content does not match its hash")
            self._remember(position, row.sealed.seq, row.hash)
        for row in self._unplaced[len(gap) :]:
            self._report(row.sealed.seq, INSERTED, "not an event of this chain")
        if len(self._unplaced) >= len(gap):
            self._expected = max(self._expected, original)
        else:
            self._expected += len(self._unplaced)
        self._unplaced = []

    def _settle_skipped(self, reached: int) -> None:
        """Positions missed long enough ago that no late row will fill them: deleted."""
        for missing in [m for m in self._skipped if m < reached - _SEARCH]:
            self._report(missing, DELETED, "missing from the chain")
            del self._skipped[missing]

    def finish(self, *, size: int, head: bytes) -> list[Problem]:
        """size/head: what the chain-head row says the chain holds."""
        for row in self._unplaced:
            if row.sealed.seq <= size:
                self._report(row.sealed.seq, EDITED, "its content does not match its hash")
            else:
                self._report(row.sealed.seq, INSERTED, "not an event of this chain")
        self._unplaced = []
        for missing in sorted(self._skipped):
            self._report(missing, DELETED, "missing from the chain")
        self._skipped = {}
        last = self._expected - 1
        if last < size:
            for missing in range(last + 1, size + 1):
                self._report(missing, DELETED, "missing from the end of the chain")
        elif last > size:
            self._report(size + 1, INSERTED, "beyond the chain's recorded head")
        elif self.rows and size > self._start_size and self._last_hash != head:
            self._report(self._last_stored_seq, EDITED, "the chain's recorded head differs")
        for pending in sorted(self._checkpoints):
            for checkpoint in self._checkpoints[pending]:
                self._report(
                    pending,
                    CHECKPOINT_MISMATCH,
                    f"{checkpoint_label(checkpoint)} is beyond the chain: events it covered "
                    "are gone from the end",
                )
        self._checkpoints = {}
        self.problems.sort()
        return self.problems
