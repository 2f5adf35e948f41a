"""Signed retention anchors: where a purge cut each chain, vouched for by the purge job alone.

A chain whose first events were purged starts at an anchor; `palisade-audit verify` accepts
that start only with an anchor signed over palisade-audit-anchor/v1 (an ordinary checkpoint's
signature does not verify as one). Chains purged before this revision have none and fail verify
until their anchor is re-established (docs/security-model.md, Retention).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "anchors",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("head", sa.LargeBinary(32), nullable=False),
        sa.Column("purged_at", UTCDateTime(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
    )
    op.create_index("ix_anchors_workspace_size", "anchors", ["workspace_id", "size"])


def downgrade() -> None:
    op.drop_table("anchors")
