"""Account deletion and subject keys: the markers a deleted account and a closed workspace
leave, who each queued email is for, and the outbox of crypto-shredding requests.

- users.deleted_at: the account was deleted (accounts/deletion.py). The row keeps only its id,
  the pseudonym every other row and the security log refer to it by.
- workspaces.closed_at: the workspace lost its last member when an account was deleted. The
  row stays, so sessions, events and keys that name it keep their references.
- mail_outbox.user_id: the account a queued email is addressed to (NULL: nobody's account,
  e.g. an invitee; or queued before this revision), so a deletion drops the emails still
  queued for it. Indexed among pending rows only, like the due-time index.
- subject_shred_requests: ShredSubject calls to crypto, written in the deletion's
  transaction and deleted once crypto confirmed (accounts/subject_shreds.py).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_PENDING = sa.text("sent_at IS NULL AND failed_at IS NULL")


def upgrade() -> None:
    ts = UTCDateTime()
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("deleted_at", ts, nullable=True))
    with op.batch_alter_table("workspaces") as batch:
        batch.add_column(sa.Column("closed_at", ts, nullable=True))
    with op.batch_alter_table("mail_outbox") as batch:
        batch.add_column(sa.Column("user_id", sa.String(40), nullable=True))
    op.create_index(
        "ix_mail_outbox_user_id",
        "mail_outbox",
        ["user_id"],
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )
    op.create_table(
        "subject_shred_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("subject", sa.String(140), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        # NULL: due now; then a lease end (the deleting request's own, or a relay's), or the
        # time of the next retry after a failure.
        sa.Column("next_attempt_at", ts, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(200), nullable=True),
    )
    op.create_index(
        "ix_subject_shred_requests_next_attempt_at",
        "subject_shred_requests",
        ["next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_subject_shred_requests_next_attempt_at", table_name="subject_shred_requests")
    op.drop_table("subject_shred_requests")
    op.drop_index("ix_mail_outbox_user_id", table_name="mail_outbox")
    with op.batch_alter_table("mail_outbox") as batch:
        batch.drop_column("user_id")
    with op.batch_alter_table("workspaces") as batch:
        batch.drop_column("closed_at")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("deleted_at")
