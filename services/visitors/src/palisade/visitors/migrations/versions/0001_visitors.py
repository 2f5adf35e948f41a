"""Visitors (PII as crypto envelopes and blind-index tokens), job cursors, the event outbox.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime
from palisade.common.outbox import (
    OUTBOX_PENDING_INDEX,
    OUTBOX_TABLE,
    outbox_columns,
    outbox_forwarding_columns,
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = UTCDateTime()
    op.create_table(
        "visitors",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("test", sa.Boolean, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("erased_at", ts, nullable=True),
        sa.Column("name_ct", sa.LargeBinary, nullable=True),
        sa.Column("email_ct", sa.LargeBinary, nullable=True),
        sa.Column("phone_ct", sa.LargeBinary, nullable=True),
        sa.Column("email_index", sa.String(64), nullable=True),
        sa.Column("phone_index", sa.String(64), nullable=True),
        sa.Column("data_key_version", sa.Integer, nullable=True),
        sa.Column("index_key_version", sa.Integer, nullable=True),
    )
    op.create_index("ix_visitors_email_index", "visitors", ["workspace_id", "email_index"])
    op.create_index("ix_visitors_phone_index", "visitors", ["workspace_id", "phone_index"])
    op.create_index("ix_visitors_data_key_version", "visitors", ["data_key_version"])
    op.create_index("ix_visitors_index_key_version", "visitors", ["index_key_version"])
    op.create_table(
        "maintenance_cursors",
        sa.Column("job", sa.String(32), primary_key=True),
        sa.Column("target_version", sa.Integer, nullable=False),
        sa.Column("last_id", sa.String(36), nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )
    op.create_table(OUTBOX_TABLE, *outbox_columns(), *outbox_forwarding_columns())
    pending = sa.text("forwarded_at IS NULL AND rejected_at IS NULL")  # as outbox_pending()
    op.create_index(
        OUTBOX_PENDING_INDEX, OUTBOX_TABLE, ["id"], postgresql_where=pending, sqlite_where=pending
    )


def downgrade() -> None:
    op.drop_table(OUTBOX_TABLE)
    op.drop_table("maintenance_cursors")
    op.drop_table("visitors")
