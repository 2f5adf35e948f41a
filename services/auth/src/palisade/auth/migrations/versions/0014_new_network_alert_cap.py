"""The per-account cap on new-network alert emails (sessions/new_networks.py AlertCap).

- new_network_alert_caps: one row per account that had a new network; its lock serialises the
  cap's decision, and it says when the last "alerts paused" email was decided.
- new_network_alert_log: when each alert email of the current rolling window was decided (no
  address, no network); older rows are deleted by the account's next decision.
- new_network_alerts.kind / paused_until: what the relay sends for a row: the usual alert, or
  the one email past the cap that says until when alerts are paused. Existing rows are alerts.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = UTCDateTime()
    op.create_table(
        "new_network_alert_caps",
        sa.Column("user_id", sa.String(40), primary_key=True),
        sa.Column("paused_notice_at", ts, nullable=True),
    )
    op.create_table(
        "new_network_alert_log",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(40), nullable=False),
        sa.Column("emailed_at", ts, nullable=False),
    )
    op.create_index(
        "ix_new_network_alert_log_user_emailed",
        "new_network_alert_log",
        ["user_id", "emailed_at"],
    )
    with op.batch_alter_table("new_network_alerts") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(16), nullable=False, server_default=sa.text("'alert'"))
        )
        batch.add_column(sa.Column("paused_until", ts, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("new_network_alerts") as batch:
        batch.drop_column("paused_until")
        batch.drop_column("kind")
    op.drop_index("ix_new_network_alert_log_user_emailed", table_name="new_network_alert_log")
    op.drop_table("new_network_alert_log")
    op.drop_table("new_network_alert_caps")
