"""Endpoints (URL and secrets as crypto envelopes), deliveries and attempts, the stream cursor,
the event outbox.

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
        "endpoints",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("url_ct", sa.LargeBinary, nullable=False),
        sa.Column("url_origin", sa.String(2048), nullable=False),
        sa.Column("event_types", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("disabled_reason", sa.String(64), nullable=True),
        sa.Column("disabled_at", ts, nullable=True),
        sa.Column("failing_since", ts, nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )
    op.create_index("ix_endpoints_workspace", "endpoints", ["workspace_id", "created_at"])
    op.create_index("ix_endpoints_enabled", "endpoints", ["workspace_id", "enabled"])
    op.create_table(
        "endpoint_secrets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("endpoint_id", sa.String(36), nullable=False),
        sa.Column("secret_ct", sa.LargeBinary, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=True),
    )
    op.create_index("ix_endpoint_secrets_endpoint_id", "endpoint_secrets", ["endpoint_id"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("endpoint_id", sa.String(36), nullable=False),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("schedule_base", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", ts, nullable=True),
        sa.Column("claimed_until", ts, nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.String(64), nullable=True),
        sa.Column("last_attempt_at", ts, nullable=True),
        sa.Column("created_at", ts, nullable=False),
        sa.UniqueConstraint("endpoint_id", "event_id", name="uq_deliveries_endpoint_event"),
    )
    op.create_index("ix_deliveries_due", "deliveries", ["state", "next_attempt_at"])
    op.create_index("ix_deliveries_endpoint", "deliveries", ["endpoint_id", "created_at", "id"])
    op.create_table(
        "delivery_attempts",
        sa.Column("delivery_id", sa.String(36), primary_key=True),
        sa.Column("number", sa.Integer, primary_key=True),
        sa.Column("started_at", ts, nullable=False),
        sa.Column("status", sa.Integer, nullable=True),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("duration_ms", sa.Integer, nullable=False),
    )
    op.create_table(
        "stream_cursor",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("cursor", sa.String(256), nullable=False),
        sa.Column("updated_at", ts, nullable=False),
    )
    op.create_table(OUTBOX_TABLE, *outbox_columns(), *outbox_forwarding_columns())
    pending = sa.text("forwarded_at IS NULL AND rejected_at IS NULL")  # as outbox_pending()
    op.create_index(
        OUTBOX_PENDING_INDEX, OUTBOX_TABLE, ["id"], postgresql_where=pending, sqlite_where=pending
    )


def downgrade() -> None:
    op.drop_table(OUTBOX_TABLE)
    op.drop_table("stream_cursor")
    op.drop_table("delivery_attempts")
    op.drop_table("deliveries")
    op.drop_table("endpoint_secrets")
    op.drop_table("endpoints")
