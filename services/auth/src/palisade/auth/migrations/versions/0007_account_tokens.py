"""Account lifecycle: one table for the single-use emailed tokens of every purpose but magic
links (email verification, password reset, email-change confirmation, "this wasn't me"), the
verified-at mark on users, and the PKCE-style challenge a magic link may be bound to.

Existing users stay unverified (email_verified_at NULL): nothing here proves their address, and
marking them verified would hand a pre-hijacked account the rights of a proven one.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = UTCDateTime()
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("email_verified_at", ts, nullable=True))
    with op.batch_alter_table("magic_links") as batch:
        # base64url SHA-256 of the client's verifier (43 characters); NULL: an unbound link.
        batch.add_column(sa.Column("code_challenge", sa.String(64), nullable=True))
    op.create_table(
        "account_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("expires_at", ts, nullable=False),
        sa.Column("consumed_at", ts, nullable=True),
        sa.Column("requested_ip", sa.String(64), nullable=True),
        # Email change: the new address (sealed by crypto) and its blind index, so nothing
        # changes on the account until the new address confirms.
        sa.Column("new_email_ct", sa.LargeBinary, nullable=True),
        sa.Column("new_email_index", sa.String(128), nullable=True),
    )
    op.create_index("ix_account_tokens_user_purpose", "account_tokens", ["user_id", "purpose"])


def downgrade() -> None:
    op.drop_index("ix_account_tokens_user_purpose", table_name="account_tokens")
    op.drop_table("account_tokens")
    with op.batch_alter_table("magic_links") as batch:
        batch.drop_column("code_challenge")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("email_verified_at")
