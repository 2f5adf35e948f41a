"""Per-version encryption counts.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_usage",
        sa.Column("key_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("encryptions", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("key_usage")
