"""Services that ever asked for a blind index, and the index versions their rows still use.

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
        "index_consumers",
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        # The latest ReportIndexVersions: "1,2" (empty: no rows); NULL: never reported.
        sa.Column("versions_in_use", sa.String(512), nullable=True),
        sa.Column("reported_at", UTCDateTime(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("index_consumers")
