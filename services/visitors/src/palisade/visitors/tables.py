"""The visitors database: its tables (migrations 0001 and 0003 create exactly these columns).

No column holds a visitor's name, email or phone in clear: each is an AES-256-GCM envelope made
by the crypto service under the visitor's subject key ("visitor:<id>"), bound by associated
data to the workspace, the visitor and the field (palisade.visitors.pii). Email and phone are
also kept as blind-index tokens (keyed HMACs from crypto) for exact-match lookup; the tokens
are scoped to the workspace and field, so equal addresses in two workspaces share nothing.

The chats subpackage reads `visitors` (id, workspace_id, test, created_at, erased_at) and
writes its events to the same `outbox_events` table.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

from palisade.common.db import UTCDateTime
from palisade.common.outbox import outbox_table

MIGRATIONS_PACKAGE = "palisade.visitors.migrations"
metadata = MetaData()
TS = UTCDateTime()

ID_CHARS = 36  # vis_ + 32 hex
WORKSPACE_CHARS = 40
# "bi1.<version>.<43 base64url characters>" with room for large versions.
INDEX_TOKEN_CHARS = 64
SOURCE_CHARS = 16

visitors = Table(
    "visitors",
    metadata,
    Column("id", String(ID_CHARS), primary_key=True),
    Column("workspace_id", String(WORKSPACE_CHARS), nullable=False),
    Column("test", Boolean, nullable=False),  # made by a test-mode API key
    Column("created_at", TS, nullable=False),
    Column("erased_at", TS, nullable=True),
    # Envelopes (NULL: not given, or erased).
    Column("name_ct", LargeBinary, nullable=True),
    Column("email_ct", LargeBinary, nullable=True),
    Column("phone_ct", LargeBinary, nullable=True),
    # Blind-index tokens of the normalized email / phone (NULL: not given, or erased).
    Column("email_index", String(INDEX_TOKEN_CHARS), nullable=True),
    Column("phone_index", String(INDEX_TOKEN_CHARS), nullable=True),
    # The data key version every envelope of the row is under (the rewrap job moves them all
    # together) and the index key version of its tokens; NULL when the row holds none.
    Column("data_key_version", Integer, nullable=True),
    Column("index_key_version", Integer, nullable=True),
    # Who created it (migration 0003): "widget" (a publishable key: public, unverified), "api"
    # (a secret key), "dashboard" (a person); NULL for rows from before it was recorded.
    Column("source", String(SOURCE_CHARS), nullable=True),
)
# Lookups are per workspace; the mode and erasure are filtered on the few rows that match.
Index("ix_visitors_email_index", visitors.c.workspace_id, visitors.c.email_index)
Index("ix_visitors_phone_index", visitors.c.workspace_id, visitors.c.phone_index)
# The rewrap job's and the key-version gauge's reads.
Index("ix_visitors_data_key_version", visitors.c.data_key_version)
Index("ix_visitors_index_key_version", visitors.c.index_key_version)

# Where a resumable maintenance job (rewrap, reindex) stopped: the last visitor id it finished
# for a target key version. A restart carries on from there; a new target starts over.
maintenance_cursors = Table(
    "maintenance_cursors",
    metadata,
    Column("job", String(32), primary_key=True),
    Column("target_version", Integer, nullable=False),
    Column("last_id", String(ID_CHARS), nullable=False),
    Column("updated_at", TS, nullable=False),
)

outbox_events = outbox_table(metadata)
