"""The apikeys database: its tables (the migrations create exactly these columns).

No column ever holds a key: api_keys keeps the SHA-256 of the key (lookup_hash, what the
gateway asks by) and the key itself only as an AES-256-GCM envelope made by the crypto
service (secret_ct), bound by associated data to the key's id and workspace.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
)

from palisade.common.db import UTCDateTime
from palisade.common.outbox import outbox_table
from palisade.common.revocation_outbox import revocation_outbox_table

MIGRATIONS_PACKAGE = "palisade.apikeys.migrations"
metadata = MetaData()
TS = UTCDateTime()

# Column widths (the validation limits and the bounded-text helpers use the same numbers).
ID_CHARS = 40
NAME_CHARS = 100
IP_CHARS = 64
DEVICE_CHARS = 128
SOURCE_CHARS = 200
REASON_CHARS = 32

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(ID_CHARS), primary_key=True),  # key_<32 hex>
    Column("workspace_id", String(ID_CHARS), nullable=False),
    Column("name", String(NAME_CHARS), nullable=False),
    Column("type", String(16), nullable=False),  # secret | publishable
    Column("mode", String(8), nullable=False),  # live | test
    Column("lookup_hash", LargeBinary(32), nullable=False, unique=True),
    Column("secret_ct", LargeBinary, nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("last4", String(4), nullable=False),
    Column("scopes", Text, nullable=False),  # JSON list
    Column("allowed_origins", Text, nullable=False),  # JSON list
    # NULL: the service's default at verification time (a settings change applies to them).
    Column("rate_limit_rpm", Integer, nullable=True),
    Column("rate_limit_burst", Integer, nullable=True),
    Column("created_by", String(ID_CHARS), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=True),
    Column("revoked_at", TS, nullable=True),
    Column("revoke_reason", String(REASON_CHARS), nullable=True),
    Column("replaced_by", String(ID_CHARS), nullable=True),
    Column("overlap_ends_at", TS, nullable=True),
    Column("last_used_at", TS, nullable=True),
    Column("last_used_ip", String(IP_CHARS), nullable=True),
    # Set once the expiry recorder has written the key's `expired` history and security event
    # (or found it revoked first): each key's expiry is recorded exactly once.
    Column("expiry_recorded_at", TS, nullable=True),
    # Set when the creator's account was deleted (palisade.apikeys.erasure, migration 0005):
    # from then on no usage report stores an IP for the key.
    Column("creator_erased_at", TS, nullable=True),
)
Index("ix_api_keys_workspace_created", api_keys.c.workspace_id, api_keys.c.created_at)
# The expiry recorder's due keys (migration 0003): only ends not recorded yet are indexed.
PENDING_EXPIRY = and_(api_keys.c.expiry_recorded_at.is_(None), api_keys.c.expires_at.isnot(None))
PENDING_OVERLAP_END = and_(
    api_keys.c.expiry_recorded_at.is_(None), api_keys.c.overlap_ends_at.isnot(None)
)
Index(
    "ix_api_keys_expiry_due",
    api_keys.c.expires_at,
    postgresql_where=PENDING_EXPIRY,
    sqlite_where=PENDING_EXPIRY,
)
Index(
    "ix_api_keys_overlap_end_due",
    api_keys.c.overlap_ends_at,
    postgresql_where=PENDING_OVERLAP_END,
    sqlite_where=PENDING_OVERLAP_END,
)
# Revoking every key a person created (RevokeKeysOfUser).
Index("ix_api_keys_created_by", api_keys.c.created_by)

api_key_events = Table(
    "api_key_events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("key_id", String(ID_CHARS), nullable=False),
    Column("workspace_id", String(ID_CHARS), nullable=False),
    Column("type", String(32), nullable=False),
    Column("occurred_at", TS, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("ip", String(IP_CHARS), nullable=True),
    Column("device", String(DEVICE_CHARS), nullable=True),
    Column("source", String(SOURCE_CHARS), nullable=True),
    # A person's ip and device as one envelope under their subject key (migration 0006,
    # palisade.apikeys.history_seal); their ip and device columns stay empty.
    Column("client_ct", LargeBinary, nullable=True),
)
Index("ix_api_key_events_key", api_key_events.c.key_id, api_key_events.c.occurred_at)
# What a person did, wherever: the erasure of a deleted account's client details (0005).
Index("ix_api_key_events_actor", api_key_events.c.actor)

# Security notices for auth's mailer, sent after commit by palisade.apikeys.notices.
notice_outbox = Table(
    "notice_outbox",
    metadata,
    Column("id", String(ID_CHARS), primary_key=True),  # ntc_<32 hex>: the idempotency key
    Column("kind", String(40), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("next_attempt_at", TS, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("sent_at", TS, nullable=True),
    Column("failed_at", TS, nullable=True),
    Column("last_error", String(200), nullable=True),  # an exception class or status name
    Column("payload", Text, nullable=False),  # JSON: recipients and details, never a key
)
NOTICE_PENDING = and_(notice_outbox.c.sent_at.is_(None), notice_outbox.c.failed_at.is_(None))
Index(
    "ix_notice_outbox_next_attempt_at",
    notice_outbox.c.next_attempt_at,
    postgresql_where=NOTICE_PENDING,
    sqlite_where=NOTICE_PENDING,
)

outbox = outbox_table(metadata)
revocation_outbox = revocation_outbox_table(metadata)
