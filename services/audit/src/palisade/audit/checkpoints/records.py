"""Stored checkpoints and retention anchors (SQL)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update

from palisade.audit.model import AnchorRecord, CheckpointRecord
from palisade.audit.store import AuditTransaction
from palisade.audit.tables import anchors, chains, checkpoints

_COLUMNS = (
    checkpoints.c.id,
    checkpoints.c.workspace_id,
    checkpoints.c.size,
    checkpoints.c.head,
    checkpoints.c.signed_at,
    checkpoints.c.key_id,
    checkpoints.c.signature,
    checkpoints.c.kind,
)


def _record(row: Sequence[Any]) -> CheckpointRecord:
    cid, workspace_id, size, head, signed_at, key_id, signature, kind = row
    return CheckpointRecord(
        cid, workspace_id, size, bytes(head), signed_at, key_id, bytes(signature), kind
    )


async def insert_checkpoint(
    tx: AuditTransaction,
    *,
    workspace_id: str,
    size: int,
    head: bytes,
    signed_at: datetime,
    key_id: str,
    signature: bytes,
    kind: str,
) -> CheckpointRecord:
    result = await tx.conn.execute(
        insert(checkpoints)
        .values(
            workspace_id=workspace_id,
            size=size,
            head=head,
            signed_at=signed_at,
            key_id=key_id,
            signature=signature,
            kind=kind,
        )
        .returning(checkpoints.c.id)
    )
    checkpoint_id = int(result.scalar_one())
    return CheckpointRecord(
        checkpoint_id, workspace_id, size, head, signed_at, key_id, signature, kind
    )


async def latest_checkpoint(
    tx: AuditTransaction, workspace_id: str, *, at_most: int | None = None
) -> CheckpointRecord | None:
    """The checkpoint of the largest size (at most at_most), the newest of equals."""
    query = select(*_COLUMNS).where(checkpoints.c.workspace_id == workspace_id)
    if at_most is not None:
        query = query.where(checkpoints.c.size <= at_most)
    row = (
        await tx.conn.execute(
            query.order_by(checkpoints.c.size.desc(), checkpoints.c.id.desc()).limit(1)
        )
    ).first()
    return _record(row) if row is not None else None


async def checkpoints_of(tx: AuditTransaction, workspace_id: str) -> list[CheckpointRecord]:
    rows = await tx.conn.execute(
        select(*_COLUMNS)
        .where(checkpoints.c.workspace_id == workspace_id)
        .order_by(checkpoints.c.size, checkpoints.c.id)
    )
    return [_record(r) for r in rows]


async def checkpointed_sizes(tx: AuditTransaction) -> dict[str, int]:
    """Each chain's largest checkpointed size."""
    rows = await tx.conn.execute(
        select(checkpoints.c.workspace_id, func.max(checkpoints.c.size)).group_by(
            checkpoints.c.workspace_id
        )
    )
    return {w: int(s) for w, s in rows}


async def set_anchor(tx: AuditTransaction, workspace_id: str, checkpoint: CheckpointRecord) -> None:
    await tx.conn.execute(
        update(chains)
        .where(chains.c.workspace_id == workspace_id)
        .values(
            anchor_size=checkpoint.size,
            anchor_head=checkpoint.head,
            anchor_checkpoint_id=checkpoint.id,
        )
    )


_ANCHOR_COLUMNS = (
    anchors.c.id,
    anchors.c.workspace_id,
    anchors.c.size,
    anchors.c.head,
    anchors.c.purged_at,
    anchors.c.key_id,
    anchors.c.signature,
)


def _anchor(row: Sequence[Any]) -> AnchorRecord:
    aid, workspace_id, size, head, purged_at, key_id, signature = row
    return AnchorRecord(aid, workspace_id, size, bytes(head), purged_at, key_id, bytes(signature))


async def insert_anchor(
    tx: AuditTransaction,
    *,
    workspace_id: str,
    size: int,
    head: bytes,
    purged_at: datetime,
    key_id: str,
    signature: bytes,
) -> AnchorRecord:
    result = await tx.conn.execute(
        insert(anchors)
        .values(
            workspace_id=workspace_id,
            size=size,
            head=head,
            purged_at=purged_at,
            key_id=key_id,
            signature=signature,
        )
        .returning(anchors.c.id)
    )
    return AnchorRecord(
        int(result.scalar_one()), workspace_id, size, head, purged_at, key_id, signature
    )


async def anchors_at(tx: AuditTransaction, workspace_id: str, size: int) -> list[AnchorRecord]:
    """The retention anchors stored for this chain at this size (one, unless tampered with)."""
    rows = await tx.conn.execute(
        select(*_ANCHOR_COLUMNS)
        .where(anchors.c.workspace_id == workspace_id, anchors.c.size == size)
        .order_by(anchors.c.id)
    )
    return [_anchor(r) for r in rows]
