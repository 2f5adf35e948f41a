"""Key revocation requests: auth's outbox of RevokeKeysOfUser calls to the apikeys service.

A row is written in the transaction that ends a person's right to their keys (a member
removed, an account disabled or deleted) and deleted only once apikeys has answered OK, so an
apikeys outage delays the revocation but never loses it (accounts/key_revocations.py).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    ts = UTCDateTime()
    op.create_table(
        "key_revocation_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(40), nullable=False),
        # NULL: the person's keys in every workspace.
        sa.Column("workspace_id", sa.String(40), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("created_at", ts, nullable=False),
        # NULL: never tried (due now); then a relay's lease end, or the next retry's time.
        sa.Column("next_attempt_at", ts, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(200), nullable=True),
    )
    op.create_index(
        "ix_key_revocation_requests_next_attempt_at",
        "key_revocation_requests",
        ["next_attempt_at"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_key_revocation_requests_next_attempt_at", table_name="key_revocation_requests"
    )
    op.drop_table("key_revocation_requests")
