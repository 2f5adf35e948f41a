"""The webhooks domain's values (no gRPC or SQL types), and the delivery body's one format."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ENDPOINT_PREFIX = "whk_"
DELIVERY_PREFIX = "dlv_"
EVENT_PREFIX = "evt_"

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
# Why an endpoint is disabled (Webhook.disabled_reason).
GONE, FAILING, BY_USER = "gone", "failing", "disabled_by_user"


_ENDPOINT_ID = re.compile(r"whk_[0-9a-f]{32}")
_DELIVERY_ID = re.compile(r"dlv_[0-9a-f]{32}")


def is_endpoint_id(text: str) -> bool:
    """An id this service could have issued (anything else is looked up nowhere: a NUL or a
    megabyte of text never reaches the database)."""
    return _ENDPOINT_ID.fullmatch(text) is not None


def is_delivery_id(text: str) -> bool:
    return _DELIVERY_ID.fullmatch(text) is not None


def new_endpoint_id() -> str:
    return ENDPOINT_PREFIX + secrets.token_hex(16)


def new_delivery_id() -> str:
    return DELIVERY_PREFIX + secrets.token_hex(16)


def new_event_id() -> str:
    return EVENT_PREFIX + secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    workspace_id: str
    url: str = field(repr=False)  # may carry a receiver's token: never logged
    url_origin: str
    event_types: tuple[str, ...]
    description: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Created:
    endpoint: Endpoint
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Rotated:
    secret: str = field(repr=False)
    previous_expires_at: datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    deliveries: list[Delivery]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    """What one attempt needs: the decrypted URL and the live secrets, newest first (sign with
    every one: during a rotation's overlap that is the new and the previous secret)."""

    endpoint_id: str
    workspace_id: str
    url: str = field(repr=False)
    secrets: tuple[str, ...] = field(repr=False)
    enabled: bool = True


def rfc3339(moment: datetime) -> str:
    """UTC, millisecond precision, "Z": how every timestamp in a delivery body is written."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def delivery_body(event_type: str, occurred_at: datetime, data: Mapping[str, Any]) -> str:
    """The body of a delivery, `{type, timestamp, data}`, as stored and signed and sent.

    Compact JSON with keys in a fixed order, so the stored text is the exact bytes signed
    (never re-serialised between the queue and the wire)."""
    return json.dumps(
        {"type": event_type, "timestamp": rfc3339(occurred_at), "data": dict(data)},
        separators=(",", ":"),
        ensure_ascii=False,
    )
