"""API keys, their history, the security-event, notice and revocation outboxes.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime
from palisade.common.outbox import OUTBOX_TABLE, outbox_columns

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _serial() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    ts = UTCDateTime()
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("lookup_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("secret_ct", sa.LargeBinary, nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("last4", sa.String(4), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("allowed_origins", sa.Text, nullable=False),
        sa.Column("rate_limit_rpm", sa.Integer, nullable=True),
        sa.Column("rate_limit_burst", sa.Integer, nullable=True),
        sa.Column("created_by", sa.String(40), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=True),
        sa.Column("revoked_at", ts, nullable=True),
        sa.Column("revoke_reason", sa.String(32), nullable=True),
        sa.Column("replaced_by", sa.String(40), nullable=True),
        sa.Column("overlap_ends_at", ts, nullable=True),
        sa.Column("last_used_at", ts, nullable=True),
        sa.Column("last_used_ip", sa.String(64), nullable=True),
    )
    op.create_index("ix_api_keys_workspace_created", "api_keys", ["workspace_id", "created_at"])
    op.create_table(
        "api_key_events",
        sa.Column("id", _serial(), primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("workspace_id", sa.String(40), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("occurred_at", ts, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("device", sa.String(128), nullable=True),
        sa.Column("source", sa.String(200), nullable=True),
    )
    op.create_index("ix_api_key_events_key", "api_key_events", ["key_id", "occurred_at"])
    op.create_table(
        "notice_outbox",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("next_attempt_at", ts, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("sent_at", ts, nullable=True),
        sa.Column("failed_at", ts, nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.Column("payload", sa.Text, nullable=False),
    )
    pending = sa.text("sent_at IS NULL AND failed_at IS NULL")
    op.create_index(
        "ix_notice_outbox_next_attempt_at",
        "notice_outbox",
        ["next_attempt_at"],
        postgresql_where=pending,
        sqlite_where=pending,
    )
    op.create_table(OUTBOX_TABLE, *outbox_columns())
    op.create_table(
        "revocation_outbox",
        sa.Column("id", _serial(), primary_key=True, autoincrement=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("notice", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("revocation_outbox", OUTBOX_TABLE, "notice_outbox", "api_key_events"):
        op.drop_table(table)
    op.drop_table("api_keys")
