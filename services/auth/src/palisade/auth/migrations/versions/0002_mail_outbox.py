"""The mail outbox: encrypted outgoing emails, sent by the relay with retries.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Sent and failed rows stay out of the index (see palisade.auth.mail.outbox).
_PENDING = sa.text("sent_at IS NULL AND failed_at IS NULL")


def upgrade() -> None:
    ts = UTCDateTime()
    op.create_table(
        "mail_outbox",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("next_attempt_at", ts, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("sent_at", ts, nullable=True),
        sa.Column("failed_at", ts, nullable=True),
        sa.Column("last_error", sa.String(200), nullable=True),
        sa.Column("message_ct", sa.LargeBinary, nullable=True),
    )
    op.create_index(
        "ix_mail_outbox_next_attempt_at",
        "mail_outbox",
        ["next_attempt_at"],
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_mail_outbox_next_attempt_at", table_name="mail_outbox")
    op.drop_table("mail_outbox")
