"""Data subjects' wrapped secrets and the tombstones of shredded subjects (crypto-shredding).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_keys",
        # "user:usr_…", "visitor:vis_…", "apikey:…" (palisade.crypto.subjects.check_subject).
        sa.Column("subject", sa.String(128), primary_key=True),
        # Random; named in the header of every envelope sealed under the subject's key.
        sa.Column("key_id", sa.LargeBinary(16), nullable=False, unique=True),
        # The secret, wrapped under a key derived from data key `wrap_version` (never raw);
        # both NULL once shredded.
        sa.Column("wrapped_secret", sa.LargeBinary(), nullable=True),
        sa.Column("wrap_version", sa.Integer, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("shredded_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "(wrapped_secret IS NULL) = (shredded_at IS NOT NULL)"
            " AND (wrapped_secret IS NULL) = (wrap_version IS NULL)",
            name="subject_keys_secret_or_tombstone",
        ),
    )


def downgrade() -> None:
    op.drop_table("subject_keys")
