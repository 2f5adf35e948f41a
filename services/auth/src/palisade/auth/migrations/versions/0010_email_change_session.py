"""Email-change links remember the session that asked for them.

account_tokens.session_id: for an email_change row, the session the request was made in. The
link confirms only while that session is still live, so ending the session (signing out, "sign
out everywhere", a password change or reset, an address's first proof) also ends the change it
asked for (accounts/email_change.py). NULL for every other purpose, and for change links
issued before this revision (those are still retired by the same events).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account_tokens") as batch:
        batch.add_column(sa.Column("session_id", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("account_tokens") as batch:
        batch.drop_column("session_id")
