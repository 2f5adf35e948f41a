"""Security notices sent for other services (SendNotice), one row per idempotency key.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notice_requests",
        sa.Column("caller", sa.String(64), primary_key=True),
        sa.Column("idempotency_key", sa.String(128), primary_key=True),
        sa.Column("fingerprint", sa.LargeBinary(32), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("recipients", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_notice_requests_created_at", "notice_requests", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_notice_requests_created_at", table_name="notice_requests")
    op.drop_table("notice_requests")
