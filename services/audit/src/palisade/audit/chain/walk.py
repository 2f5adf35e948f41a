"""Verifying chains as stored: a chain from its start or retention anchor, or only the part
added since its last checkpoint (what the service checks before signing the next one).

A chain that does not start at event 1 must start at a signed retention anchor (a statement
only the purge job signs, palisade.audit.checkpoints.notes.anchor_note): deleting a chain's
oldest events and pointing its start at an ordinary checkpoint is reported, not taken for a
purge. Checkpoints kept outside the database (the witness file, one a client fetched) are
checked like stored ones: the chain must still hold each one's prefix, so a tail cut off
together with the checkpoints signed over it shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from palisade.audit.chain.verify import (
    BAD_SIGNATURE,
    CHECKPOINT_MISMATCH,
    ChainVerifier,
    Problem,
)
from palisade.audit.checkpoints.notes import anchor_note, note
from palisade.audit.checkpoints.records import anchors_at, checkpoints_of
from palisade.audit.model import GENESIS_HASH, AnchorRecord, ChainHead, CheckpointRecord
from palisade.audit.store import AuditStore, AuditTransaction

# Rows read per query (each page in its own short transaction: no lock is held meanwhile).
PAGE_ROWS = 2000

Verify = Callable[[str, bytes, bytes], bool]  # (key id, signature, message) -> valid
SignatureCheck = Callable[[CheckpointRecord], bool]
AnchorCheck = Callable[[AnchorRecord], bool]


@dataclass(frozen=True)
class SignatureChecks:
    checkpoint: SignatureCheck
    anchor: AnchorCheck


def signature_checks(verify: Verify) -> SignatureChecks:
    """Each signature is checked over the note rebuilt from the stored fields."""

    def checkpoint(record: CheckpointRecord) -> bool:
        text = note(record.workspace_id, record.size, record.head, record.signed_at)
        return verify(record.key_id, record.signature, text.encode())

    def anchor(record: AnchorRecord) -> bool:
        text = anchor_note(record.workspace_id, record.size, record.head, record.purged_at)
        return verify(record.key_id, record.signature, text.encode())

    return SignatureChecks(checkpoint, anchor)


async def anchor_problems(
    tx: AuditTransaction, head: ChainHead, anchor_ok: AnchorCheck
) -> list[Problem]:
    """What is wrong with where the chain starts: nothing when it starts at event 1, else a
    signed retention anchor of exactly that size and head must exist."""
    if not head.anchor_size:
        return []
    found = [
        a
        for a in await anchors_at(tx, head.workspace_id, head.anchor_size)
        if a.head == head.anchor_head
    ]
    if not found:
        detail = (
            f"the chain starts after event {head.anchor_size}, and no retention anchor "
            "vouches for that start (its oldest events were removed outside a purge)"
        )
        return [Problem(head.workspace_id, head.anchor_size, CHECKPOINT_MISMATCH, detail)]
    if not any(anchor_ok(a) for a in found):
        return [Problem(head.workspace_id, head.anchor_size, BAD_SIGNATURE, "the retention anchor")]
    return []


async def _walk(store: AuditStore, verifier: ChainVerifier, workspace_id: str) -> None:
    after = (0, 0)
    while True:
        async with store.transaction() as tx:
            page = await tx.chain_events(workspace_id, after=after, limit=PAGE_ROWS)
        for event in page:
            verifier.feed(event)
        if len(page) < PAGE_ROWS:
            return
        after = (page[-1].sealed.seq, page[-1].position)


async def verify_chain(
    store: AuditStore,
    workspace_id: str,
    *,
    signatures: SignatureChecks,
    outside: Sequence[CheckpointRecord] = (),
) -> list[Problem]:
    """Every problem of one chain, from its start (or its retention anchor) to its head, of
    every checkpoint stored for it, and of the checkpoints of it kept outside the database
    (outside: the witness file's, or ones a client fetched; a copy of a stored one is checked
    once)."""
    async with store.transaction() as tx:
        head = await tx.chain(workspace_id)
        stored_checkpoints = await checkpoints_of(tx, workspace_id)
        chain = head or ChainHead(workspace_id, 0, GENESIS_HASH, 0, GENESIS_HASH, None)
        early = await anchor_problems(tx, chain, signatures.anchor)
    kept_outside = [
        c
        for c in outside
        if c.workspace_id == workspace_id
        and not any(c.same_statement(s) for s in stored_checkpoints)
    ]
    verifier = ChainVerifier(
        workspace_id,
        start_size=chain.anchor_size,
        start_head=chain.anchor_head,
        checkpoints=[*stored_checkpoints, *kept_outside],
        signature_ok=signatures.checkpoint,
    )
    await _walk(store, verifier, workspace_id)
    return sorted(early + verifier.finish(size=chain.size, head=chain.head))


async def verify_since(
    store: AuditStore,
    head: ChainHead,
    base: CheckpointRecord | None,
    *,
    signatures: SignatureChecks,
    checkpoints: Sequence[CheckpointRecord] = (),
) -> list[Problem]:
    """The problems of the part of a chain after base (its latest checkpoint; None: from the
    anchor or the start) up to head, as read from the chain-head row beforehand, of the given
    checkpoints within that part (their signatures, and the chain at their sizes), and of the
    chain's start (its retention anchor)."""
    start_size, start_head = head.anchor_size, head.anchor_head
    async with store.transaction() as tx:
        problems = await anchor_problems(tx, head, signatures.anchor)
    if base is not None and base.size >= head.anchor_size:
        if signatures.checkpoint(base):
            start_size, start_head = base.size, base.head
        else:
            problems.append(Problem(head.workspace_id, base.size, BAD_SIGNATURE, "the latest"))
    verifier = ChainVerifier(
        head.workspace_id,
        start_size=start_size,
        start_head=start_head,
        checkpoints=[c for c in checkpoints if start_size <= c.size <= head.size],
        signature_ok=signatures.checkpoint,
    )
    after = (start_size, 2**62)  # rows of later positions only
    while True:
        async with store.transaction() as tx:
            page = await tx.chain_events(head.workspace_id, after=after, limit=PAGE_ROWS)
        for event in page:
            if event.sealed.seq > head.size:
                break  # appended after the head was read: the next checkpoint's part
            verifier.feed(event)
        if len(page) < PAGE_ROWS or page[-1].sealed.seq > head.size:
            break
        after = (page[-1].sealed.seq, page[-1].position)
    return sorted(problems + verifier.finish(size=head.size, head=head.head))
