"""Verifying chains as stored: a chain from its start or retention anchor, or only the part
added since its last checkpoint (what the service checks before signing the next one)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from palisade.audit.chain.verify import (
    BAD_SIGNATURE,
    CHECKPOINT_MISMATCH,
    ChainVerifier,
    Problem,
)
from palisade.audit.checkpoints.notes import note
from palisade.audit.checkpoints.records import checkpoint_by_id, checkpoints_of
from palisade.audit.model import GENESIS_HASH, ChainHead, CheckpointRecord
from palisade.audit.store import AuditStore

# Rows read per query (each page in its own short transaction: no lock is held meanwhile).
PAGE_ROWS = 2000

SignatureCheck = Callable[[CheckpointRecord], bool]


def signature_check(verify: Callable[[str, bytes, bytes], bool]) -> SignatureCheck:
    """A checkpoint's signature is checked over the note rebuilt from its stored fields."""

    def check(checkpoint: CheckpointRecord) -> bool:
        text = note(checkpoint.workspace_id, checkpoint.size, checkpoint.head, checkpoint.signed_at)
        return verify(checkpoint.key_id, checkpoint.signature, text.encode())

    return check


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
    store: AuditStore, workspace_id: str, *, signature_ok: SignatureCheck
) -> list[Problem]:
    """Every problem of one chain, from its start (or its retention anchor) to its head, and of
    every checkpoint stored for it."""
    async with store.transaction() as tx:
        head = await tx.chain(workspace_id)
        stored_checkpoints = await checkpoints_of(tx, workspace_id)
        anchor = None
        if head is not None and head.anchor_checkpoint_id is not None:
            anchor = await checkpoint_by_id(tx, head.anchor_checkpoint_id)
    chain = head or ChainHead(workspace_id, 0, GENESIS_HASH, 0, GENESIS_HASH, None)
    early: list[Problem] = []
    if chain.anchor_size:
        if anchor is None or (anchor.size, anchor.head) != (chain.anchor_size, chain.anchor_head):
            early.append(
                Problem(
                    workspace_id,
                    chain.anchor_size,
                    CHECKPOINT_MISMATCH,
                    "the retention anchor has no matching checkpoint",
                )
            )
        elif not signature_ok(anchor):
            early.append(Problem(workspace_id, anchor.size, BAD_SIGNATURE, "the retention anchor"))
    verifier = ChainVerifier(
        workspace_id,
        start_size=chain.anchor_size,
        start_head=chain.anchor_head,
        checkpoints=stored_checkpoints,
        signature_ok=signature_ok,
    )
    await _walk(store, verifier, workspace_id)
    return sorted(early + verifier.finish(size=chain.size, head=chain.head))


async def verify_since(
    store: AuditStore,
    head: ChainHead,
    base: CheckpointRecord | None,
    *,
    signature_ok: SignatureCheck,
    checkpoints: Sequence[CheckpointRecord] = (),
) -> list[Problem]:
    """The problems of the part of a chain after base (its latest checkpoint; None: from the
    anchor or the start) up to head, as read from the chain-head row beforehand, and of the
    given checkpoints within that part (their signatures, and the chain at their sizes)."""
    start_size, start_head = head.anchor_size, head.anchor_head
    problems: list[Problem] = []
    if base is not None and base.size >= head.anchor_size:
        if signature_ok(base):
            start_size, start_head = base.size, base.head
        else:
            problems.append(Problem(head.workspace_id, base.size, BAD_SIGNATURE, "the latest"))
    verifier = ChainVerifier(
        head.workspace_id,
        start_size=start_size,
        start_head=start_head,
        checkpoints=[c for c in checkpoints if start_size <= c.size <= head.size],
        signature_ok=signature_ok,
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
