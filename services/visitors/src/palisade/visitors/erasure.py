"""Finishing erasures, and telling a real one from a planted envelope.

EraseVisitor shreds the subject key first and clears the row second, so a crash in between
leaves a row whose envelopes answer `subject_erased`. Reads and the key jobs finish such an
erasure, as the service itself (`service:visitors`: the reader did not erase anyone).

But crypto answers `subject_erased` for an erased subject's envelope whatever its associated
data (the tag's key died with the secret), so an old envelope of an erased visitor pasted into
a live visitor's row (a restored backup, a bad migration, someone with database access) looks
the same. Before finishing, the row's own subject is asked about: an Encrypt for it fails with
`subject_erased` only if it really was shredded. If it was not, the row was tampered with: it
fails as an integrity fault (CryptoFailure) and nothing is cleared. That costs one extra crypto
call, only on this rare path.
"""

from __future__ import annotations

import logging

from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, CryptoFailure, SubjectErased
from palisade.common.outbox import SecurityEvent
from palisade.visitors.model import StoredVisitor
from palisade.visitors.pii import SERVICE, subject_of
from palisade.visitors.store import VisitorStore

log = logging.getLogger("palisade.visitors.erasure")

SYSTEM_ACTOR = "service:visitors"


def visitor_event(kind: str, row: StoredVisitor, actor: str, clock: Clock) -> SecurityEvent:
    """visitor.created / visitor.erased: ids only, never PII."""
    return SecurityEvent(
        type=kind,
        occurred_at=clock.now(),
        actor=actor,
        subject=subject_of(row.id),
        workspace_id=row.workspace_id,
        details={"visitor_id": row.id, "test": row.test},
    )


class Erasures:
    def __init__(self, *, store: VisitorStore, crypto: CryptoClient, clock: Clock) -> None:
        self._store = store
        self._crypto = crypto
        self._clock = clock

    async def finish(self, row: StoredVisitor, actor: str) -> bool:
        """Clears the row and records visitor.erased, once (after the shred)."""
        event = visitor_event("visitor.erased", row, actor, self._clock)
        finished = await self._store.finish_erasure(row.id, self._clock.now(), event)
        if finished:
            log.info("visitor erased", extra={"visitor_id": row.id})
        return finished

    async def subject_shredded(self, row: StoredVisitor) -> bool:
        """Whether the row's own subject key is shredded (not just some envelope's)."""
        probe = associated_data(SERVICE, row.workspace_id, row.id, "erasure-probe")
        try:
            await self._crypto.encrypt([(b"\x00", probe)], subject=subject_of(row.id))
        except SubjectErased:
            return True
        return False

    async def finish_interrupted(self, row: StoredVisitor) -> bool:
        """For a row with an envelope that answered subject_erased: finishes the erasure if the
        row's subject really is shredded (True once done, False if someone else finished it);
        otherwise raises CryptoFailure, leaving the row as it is."""
        if not await self.subject_shredded(row):
            log.error(
                "a live visitor's row holds an erased subject's envelope; left as it is",
                extra={"visitor_id": row.id},
            )
            raise CryptoFailure()
        return await self.finish(row, SYSTEM_ACTOR)
