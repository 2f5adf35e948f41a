"""disabled_notices: the owners' emails sent for endpoints disabled as failing (one row per
disabling, so the sweep sends each once; palisade.webhooks.delivery.notices).

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
    ts = UTCDateTime()
    op.create_table(
        "disabled_notices",
        sa.Column("endpoint_id", sa.String(36), primary_key=True),
        sa.Column("disabled_at", ts, primary_key=True),
        sa.Column("result", sa.String(64), nullable=False),
        sa.Column("recorded_at", ts, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("disabled_notices")
