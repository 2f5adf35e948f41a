"""visitors.source: who created the visitor ("widget": a publishable key, "api": a secret key,
"dashboard": a person). A publishable key is public (it is in a web page) and nothing it sends
is verified, so integrations must be able to tell its visitors apart. Rows from before have
NULL (unknown). A plain ADD COLUMN on both backends: no table rebuild, so the chats FTS5
triggers on SQLite are untouched.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("visitors", sa.Column("source", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("visitors") as batch:
        batch.drop_column("source")
