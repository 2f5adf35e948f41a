"""The webhooks database: its tables (migration 0001 creates exactly these columns).

Secrets and URLs are never stored in clear. Each signing secret and each endpoint URL is an
AES-256-GCM envelope made by the crypto service, with associated data binding the service, the
workspace, the endpoint and the field (palisade.webhooks.sealing): an envelope copied into
another endpoint's row fails to open. The URL is sealed because receivers commonly put a
bearer token in it (a query parameter, or a path such as Slack's /services/T/B/<token>); only
its origin (scheme://host[:port]) is kept in clear, for operators and events.

For the delivery worker and the intake (palisade.webhooks.delivery / .intake):

- `endpoints`: match an event with `enabled` and the JSON list `event_types`; the decrypted
  URL and live secrets come from `WebhookStore.delivery_target()` (store.py), never from
  these columns directly. `failing_since` is when the current streak of failed attempts began
  (NULL after any success); `WebhookStore.disable()` sets enabled=false with a reason
  ("gone", "failing") and `disabled_at`.
- `endpoint_secrets`: newest `created_at` first; a row with `expires_at` in the past no longer
  signs (delivery_target() leaves it out). `expires_at` NULL: the current secret.
- `deliveries`: one row per (endpoint, event), UNIQUE, so a re-fed stream event never doubles
  (insert with ON CONFLICT DO NOTHING, see store.queue_delivery()). `payload` is the body
  exactly as it is signed and sent (`{"type", "timestamp", "data"}`, UTF-8 JSON). The worker
  claims due rows (`state = 'pending' AND next_attempt_at <= now` and no live lease:
  `claimed_until IS NULL OR claimed_until < now`) by setting `claimed_by`/`claimed_until`
  (a lease, so a worker that died mid-attempt leaves the row claimable once it lapses),
  then records the attempt and sets `state`, `attempts`, `next_attempt_at`, `last_*` and
  clears the lease. Every write after the claim must be conditioned on `claimed_by`: the
  endpoint may have been deleted (its deliveries go with it) or the row retried meanwhile.
- `delivery_attempts`: one row per attempt, (delivery_id, number) with number from 1.
- `stream_cursor`: one row (id = 1), the last audit StreamEvents cursor fully fanned out.
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
    Text,
    UniqueConstraint,
)

from palisade.common.db import UTCDateTime
from palisade.common.outbox import outbox_table

MIGRATIONS_PACKAGE = "palisade.webhooks.migrations"
metadata = MetaData()
TS = UTCDateTime()

ID_CHARS = 36  # whk_ / dlv_ + 32 hex
WORKSPACE_CHARS = 40
EVENT_ID_CHARS = 64
EVENT_TYPE_CHARS = 64
# scheme://host:port of a URL of at most 2,048 characters.
ORIGIN_CHARS = 2048
CODE_CHARS = 64  # disabled_reason, last_error: short stable codes
WORKER_CHARS = 64

endpoints = Table(
    "endpoints",
    metadata,
    Column("id", String(ID_CHARS), primary_key=True),
    Column("workspace_id", String(WORKSPACE_CHARS), nullable=False),
    Column("url_ct", LargeBinary, nullable=False),  # crypto envelope of the full URL
    Column("url_origin", String(ORIGIN_CHARS), nullable=False),  # scheme://host[:port]
    Column("event_types", Text, nullable=False),  # JSON list of catalogue types, sorted
    Column("description", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("disabled_reason", String(CODE_CHARS), nullable=True),
    Column("disabled_at", TS, nullable=True),
    Column("failing_since", TS, nullable=True),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
)
# The workspace's list (newest first).
Index("ix_endpoints_workspace", endpoints.c.workspace_id, endpoints.c.created_at)
# The intake's fan-out reads enabled endpoints of a workspace.
Index("ix_endpoints_enabled", endpoints.c.workspace_id, endpoints.c.enabled)

endpoint_secrets = Table(
    "endpoint_secrets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("endpoint_id", String(ID_CHARS), nullable=False, index=True),
    Column("secret_ct", LargeBinary, nullable=False),  # crypto envelope of "whsec_…"
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=True),  # NULL: current; else the previous, until then
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(ID_CHARS), primary_key=True),
    Column("endpoint_id", String(ID_CHARS), nullable=False),
    Column("workspace_id", String(WORKSPACE_CHARS), nullable=False),
    Column("event_id", String(EVENT_ID_CHARS), nullable=False),  # the webhook-id header
    Column("event_type", String(EVENT_TYPE_CHARS), nullable=False),
    Column("payload", Text, nullable=False),  # the body exactly as signed
    Column("state", String(16), nullable=False),  # pending | succeeded | failed
    Column("attempts", Integer, nullable=False),  # every attempt made, manual retries too
    # Attempts made before the current round of the retry schedule: a manual retry starts a
    # new round (schedule_base = attempts), so its delays are retry_schedule[attempts -
    # schedule_base - 1] and the round fails once those are spent.
    Column("schedule_base", Integer, nullable=False),
    Column("next_attempt_at", TS, nullable=True),  # NULL once succeeded or failed
    Column("claimed_until", TS, nullable=True),
    Column("claimed_by", String(WORKER_CHARS), nullable=True),
    Column("last_status", Integer, nullable=True),  # HTTP status of the last attempt
    Column("last_error", String(CODE_CHARS), nullable=True),
    Column("last_attempt_at", TS, nullable=True),
    Column("created_at", TS, nullable=False),
    UniqueConstraint("endpoint_id", "event_id", name="uq_deliveries_endpoint_event"),
)
# The worker's claim: due pending rows in time order.
Index("ix_deliveries_due", deliveries.c.state, deliveries.c.next_attempt_at)
# The delivery log per endpoint, newest first (and the keyset paging of it).
Index("ix_deliveries_endpoint", deliveries.c.endpoint_id, deliveries.c.created_at, deliveries.c.id)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("delivery_id", String(ID_CHARS), primary_key=True),
    Column("number", Integer, primary_key=True),  # 1, 2, …
    Column("started_at", TS, nullable=False),
    Column("status", Integer, nullable=True),  # HTTP status; NULL: none (timeout, refused, …)
    Column("error", String(CODE_CHARS), nullable=True),
    Column("duration_ms", Integer, nullable=False),
)

stream_cursor = Table(
    "stream_cursor",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("cursor", String(256), nullable=False),
    Column("updated_at", TS, nullable=False),
)

outbox_events = outbox_table(metadata)
