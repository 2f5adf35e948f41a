"""Security events are forwarded to the audit service.

outbox_events.rejected_at / rejected_code: an event audit refused for good (INVALID_ARGUMENT)
is set aside with audit's error code instead of blocking the events after it; it is kept, never
dropped. ix_outbox_events_pending: the forwarder's read, pending events in id order.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from palisade.common.outbox import add_outbox_forwarding, drop_outbox_forwarding

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_outbox_forwarding(op)


def downgrade() -> None:
    drop_outbox_forwarding(op)
