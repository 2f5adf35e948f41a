"""Indexes for the expiry recorder's due-keys query and for revoking a person's keys.

Partial: only keys with an expiry (or a rotation overlap) whose end is not recorded yet, so the
recorder's pass reads a handful of index entries instead of scanning every key, and the indexes
stay as small as the work still to do. api_keys.created_by serves RevokeKeysOfUser.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The same predicates as tables.py's Index declarations.
_PENDING_EXPIRY = sa.text("expiry_recorded_at IS NULL AND expires_at IS NOT NULL")
_PENDING_OVERLAP_END = sa.text("expiry_recorded_at IS NULL AND overlap_ends_at IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_api_keys_expiry_due",
        "api_keys",
        ["expires_at"],
        postgresql_where=_PENDING_EXPIRY,
        sqlite_where=_PENDING_EXPIRY,
    )
    op.create_index(
        "ix_api_keys_overlap_end_due",
        "api_keys",
        ["overlap_ends_at"],
        postgresql_where=_PENDING_OVERLAP_END,
        sqlite_where=_PENDING_OVERLAP_END,
    )
    op.create_index("ix_api_keys_created_by", "api_keys", ["created_by"])


def downgrade() -> None:
    for name in ("ix_api_keys_created_by", "ix_api_keys_overlap_end_due", "ix_api_keys_expiry_due"):
        op.drop_index(name, table_name="api_keys")
