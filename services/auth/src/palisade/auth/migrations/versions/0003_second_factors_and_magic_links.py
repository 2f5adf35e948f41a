"""TOTP credentials, backup codes, pending MFA logins and magic links.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = UTCDateTime()
    op.create_table(
        "totp_credentials",
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("secret_ct", sa.LargeBinary, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("confirmed_at", ts, nullable=True),
        sa.Column("last_used_step", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "backup_codes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("code_index", sa.String(128), nullable=False),
        sa.Column("code_ct", sa.LargeBinary, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("used_at", ts, nullable=True),
    )
    op.create_index("ix_backup_codes_user_id", "backup_codes", ["user_id"])
    op.create_index("ix_backup_codes_code_index", "backup_codes", ["code_index"])
    op.create_table(
        "mfa_challenges",
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("first_factor", sa.String(16), nullable=False),
        sa.Column("remember_me", sa.Boolean, nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("used_at", ts, nullable=True),
    )
    op.create_index("ix_mfa_challenges_user_id", "mfa_challenges", ["user_id"])
    op.create_table(
        "magic_links",
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("used_at", ts, nullable=True),
        sa.Column("requested_ip", sa.String(64), nullable=True),
    )
    op.create_index("ix_magic_links_user_id", "magic_links", ["user_id"])


def downgrade() -> None:
    for table in ("magic_links", "mfa_challenges", "backup_codes", "totp_credentials"):
        op.drop_table(table)
