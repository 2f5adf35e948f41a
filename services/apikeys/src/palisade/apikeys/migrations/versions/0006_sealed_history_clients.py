"""api_key_events.client_ct: a person's IP and device in a key's history, sealed by the crypto
service under their subject key (palisade.apikeys.history_seal), so deleting the account (which
shreds the subject) makes every copy unreadable, backups included.

Entries written before keep their plaintext ip/device until the person's account is deleted,
when the erasure empties them (palisade.apikeys.erasure).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_key_events") as table:
        table.add_column(sa.Column("client_ct", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_key_events") as table:
        table.drop_column("client_ct")
