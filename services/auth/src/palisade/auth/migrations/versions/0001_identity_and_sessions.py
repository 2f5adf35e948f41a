"""Users, workspaces, memberships, sessions, tokens and the outbox.

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


def upgrade() -> None:
    ts = UTCDateTime()
    op.create_table(
        "users",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("email_index", sa.String(128), nullable=False, unique=True),
        sa.Column("email_ct", sa.LargeBinary, nullable=False),
        sa.Column("name_ct", sa.LargeBinary, nullable=False),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("password_changed_at", ts, nullable=False),
        sa.Column("disabled_at", ts, nullable=True),
    )
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", ts, nullable=False),
    )
    op.create_table(
        "memberships",
        sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.id"), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", ts, nullable=False),
    )
    op.create_index("ix_memberships_user_id", "memberships", ["user_id"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("workspace_id", sa.String(40), sa.ForeignKey("workspaces.id"), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("last_seen_at", ts, nullable=False),
        sa.Column("absolute_expires_at", ts, nullable=False),
        sa.Column("remember_me", sa.Boolean, nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("device", sa.String(128), nullable=True),
        sa.Column("revoked_at", ts, nullable=True),
        sa.Column("revoked_reason", sa.String(32), nullable=True),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("session_id", sa.String(40), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("rotated_at", ts, nullable=True),
        sa.Column("successor_ct", sa.LargeBinary, nullable=True),
    )
    op.create_index("ix_refresh_tokens_session_id", "refresh_tokens", ["session_id"])
    op.create_table(
        "access_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("session_id", sa.String(40), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
    )
    op.create_index("ix_access_tokens_session_id", "access_tokens", ["session_id"])
    op.create_table(OUTBOX_TABLE, *outbox_columns())


def downgrade() -> None:
    for table in (
        "outbox_events",
        "access_tokens",
        "refresh_tokens",
        "sessions",
        "memberships",
        "workspaces",
        "users",
    ):
        op.drop_table(table)
