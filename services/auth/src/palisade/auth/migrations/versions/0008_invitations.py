"""Team invitations: one row per invitation, which is also its single-use token.

The token itself is never stored, only its SHA-256 (unique). `used_at` is the single-use core's
consumed-at column (set on acceptance, and on revocation or replacement, so a revoked link can
never be redeemed); `revoked_at` tells a revoked invitation from an accepted one. The invited
address is sealed by crypto (`email_ct`) with the blind index users have (`email_index`).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = UTCDateTime()
    op.create_table(
        "invitations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("email_index", sa.String(128), nullable=False),
        sa.Column("email_ct", sa.LargeBinary, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("used_at", ts, nullable=True),
        sa.Column("revoked_at", ts, nullable=True),
        sa.Column("accepted_by", sa.String(40), sa.ForeignKey("users.id"), nullable=True),
    )
    op.create_index(
        "ix_invitations_workspace_created", "invitations", ["workspace_id", "created_at"]
    )
    op.create_index(
        "ix_invitations_workspace_email", "invitations", ["workspace_id", "email_index"]
    )


def downgrade() -> None:
    op.drop_index("ix_invitations_workspace_email", table_name="invitations")
    op.drop_index("ix_invitations_workspace_created", table_name="invitations")
    op.drop_table("invitations")
