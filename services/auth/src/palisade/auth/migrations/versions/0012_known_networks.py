"""New-network sign-in alerts: the networks each user has signed in from, and the alerts'
outbox (sessions/new_networks.py, sessions/new_network_alerts.py).

known_networks holds keyed HMACs of (user, network), never an address. new_network_alerts
holds one row per alert until its email is queued; the row is then deleted.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = UTCDateTime()
    op.create_table(
        "known_networks",
        sa.Column("user_id", sa.String(40), primary_key=True),
        sa.Column("network_key", sa.String(64), primary_key=True),
        sa.Column("first_seen_at", ts, nullable=False),
    )
    op.create_table(
        "new_network_alerts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(40), nullable=False),
        sa.Column("occurred_at", ts, nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("device", sa.String(128), nullable=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        # NULL: due now; then a relay's lease end, or the next retry's time.
        sa.Column("next_attempt_at", ts, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(200), nullable=True),
    )
    op.create_index(
        "ix_new_network_alerts_next_attempt_at", "new_network_alerts", ["next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_new_network_alerts_next_attempt_at", table_name="new_network_alerts")
    op.drop_table("new_network_alerts")
    op.drop_table("known_networks")
