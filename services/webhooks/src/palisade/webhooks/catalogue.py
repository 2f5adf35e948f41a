"""The published catalogue of event types an endpoint may subscribe to (/v1/webhook-event-types).

Read from the security log's own catalogue (protos/palisade/audit/v1/events.proto), so a new
event type there becomes subscribable here without a second list to keep in step: security
events (sign-ins, credential changes, keys, team changes) and resource events
(visitor.created, chat.message.created, …), plus webhook.test, which only SendTestEvent makes.

A few types are left out on purpose (`webhooks_excluded` in events.proto, with the reason
beside each): bookkeeping that is no business event for a receiver, or that fires on every
request and would only be noise or load. palisade.common.event_catalogue reads the list, for
this service and for the gateway's OpenAPI document alike.
"""

from __future__ import annotations

from collections.abc import Mapping

from palisade.common.event_catalogue import (
    PUBLISHED_EVENT_TYPES,
    TEST_EVENT_TYPE,
    WEBHOOKS_EXCLUDED,
    PublishedEventType,
)

__all__ = ["EVENT_TYPES", "MAX_EVENT_TYPES", "TEST_EVENT_TYPE", "UNPUBLISHED", "EventType"]

MAX_EVENT_TYPES = 100

EventType = PublishedEventType
# Not published: catalogue entries with webhooks_excluded (events.proto says why, per type).
UNPUBLISHED: frozenset[str] = WEBHOOKS_EXCLUDED
# Sorted by type, the order the API lists them in.
EVENT_TYPES: Mapping[str, EventType] = PUBLISHED_EVENT_TYPES


def is_published(event_type: str) -> bool:
    return event_type in EVENT_TYPES
