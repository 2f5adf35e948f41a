"""The security log: events in hash chains per workspace, chain heads, signed checkpoints.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _serial() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    ts = UTCDateTime()
    postgres = op.get_bind().dialect.name == "postgresql"
    # The inserting transaction's id on Postgres (the stream's safe horizon); 0 on SQLite.
    tx_order = sa.text("(pg_current_xact_id()::text)::bigint") if postgres else sa.text("0")
    op.create_table(
        "events",
        sa.Column("id", _serial(), primary_key=True, autoincrement=True),
        sa.Column("tx_order", sa.BigInteger, nullable=False, server_default=tx_order),
        sa.Column("event_id", sa.String(32), nullable=False, unique=True),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("occurred_at", ts, nullable=False),
        sa.Column("recorded_at", ts, nullable=False),
        sa.Column("source", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(80), nullable=False),
        sa.Column("subject", sa.String(80), nullable=False),
        sa.Column("ip_ct", sa.LargeBinary, nullable=True),
        sa.Column("user_agent_ct", sa.LargeBinary, nullable=True),
        sa.Column("location_ct", sa.LargeBinary, nullable=True),
        sa.Column("pii_erased", sa.Boolean, nullable=False),
        sa.Column("device_browser", sa.String(64), nullable=False),
        sa.Column("device_os", sa.String(64), nullable=False),
        sa.Column("device_kind", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("details", sa.Text, nullable=False),
        sa.UniqueConstraint("workspace_id", "seq", name="uq_events_chain_seq"),
    )
    op.create_index("ix_events_workspace_time", "events", ["workspace_id", "occurred_at", "id"])
    op.create_index("ix_events_actor_time", "events", ["actor", "occurred_at", "id"])
    op.create_index("ix_events_subject_time", "events", ["subject", "occurred_at", "id"])
    op.create_index("ix_events_stream", "events", ["tx_order", "id"])
    op.create_table(
        "chains",
        sa.Column("workspace_id", sa.String(40), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("head", sa.LargeBinary(32), nullable=False),
        sa.Column("anchor_size", sa.BigInteger, nullable=False),
        sa.Column("anchor_head", sa.LargeBinary(32), nullable=False),
        sa.Column("anchor_checkpoint_id", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", _serial(), primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("head", sa.LargeBinary(32), nullable=False),
        sa.Column("signed_at", ts, nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
    )
    op.create_index("ix_checkpoints_workspace_size", "checkpoints", ["workspace_id", "size"])


def downgrade() -> None:
    for table in ("checkpoints", "chains", "events"):
        op.drop_table(table)
