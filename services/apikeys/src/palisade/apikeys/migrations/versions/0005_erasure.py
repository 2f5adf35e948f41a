"""What account deletion needs: a fence on the deleted person's keys, an index to find what they
did, and notices that no longer keep a client once handed to auth.

- api_keys.creator_erased_at: set on every key of a person whose account was deleted, in the
  transaction that erases their client details (palisade.apikeys.erasure). RecordKeyUsage
  stores no IP for such a key, so a gateway's usage batch that arrives after the erasure
  cannot bring the address back (the condition is read from the row the UPDATE locks).
- ix_api_key_events_actor: the erasure finds the history entries the person acted in (their
  IP and device) by actor, in any workspace, without reading the whole history.
- notice_outbox payloads of notices already sent or given up lose their client (IP and
  User-Agent): auth has them (or never will), and the relay now strips them as it marks a
  notice (palisade.apikeys.notices), so no copy lingers here.

Revision ID: 0005
Revises: 0004
"""

import json

import sqlalchemy as sa
from alembic import op

from palisade.common.db import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BATCH = 500


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.add_column(sa.Column("creator_erased_at", UTCDateTime(), nullable=True))
    op.create_index("ix_api_key_events_actor", "api_key_events", ["actor"])
    _strip_done_notices()


def _strip_done_notices() -> None:
    conn = op.get_bind()
    notices = sa.table(
        "notice_outbox",
        sa.column("id", sa.String),
        sa.column("payload", sa.Text),
        sa.column("sent_at"),
        sa.column("failed_at"),
    )
    done = sa.or_(notices.c.sent_at.isnot(None), notices.c.failed_at.isnot(None))
    after = ""
    while True:
        rows = conn.execute(
            sa.select(notices.c.id, notices.c.payload)
            .where(done, notices.c.id > after)
            .order_by(notices.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        changed = []
        for notice_id, payload in rows:
            doc = json.loads(payload)
            if doc.get("ip") or doc.get("user_agent"):
                doc["ip"] = doc["user_agent"] = ""
                changed.append({"b_id": notice_id, "b_payload": json.dumps(doc, sort_keys=True)})
        if changed:
            conn.execute(
                sa.update(notices)
                .where(notices.c.id == sa.bindparam("b_id"))
                .values(payload=sa.bindparam("b_payload")),
                changed,
            )
        after = rows[-1][0]


def downgrade() -> None:
    op.drop_index("ix_api_key_events_actor", table_name="api_key_events")
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("creator_erased_at")
