"""Services that report the data key versions their stored envelopes still use.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "data_consumers",
        sa.Column("service", sa.String(64), primary_key=True),
        # The latest ReportDataVersions: "1,2" (empty: no rows).
        sa.Column("versions_in_use", sa.String(512), nullable=False),
        sa.Column("reported_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("data_consumers")
