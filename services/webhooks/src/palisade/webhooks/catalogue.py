"""The published catalogue of event types an endpoint may subscribe to (/v1/webhook-event-types).

Read from the security log's own catalogue (protos/palisade/audit/v1/events.proto), so a new
event type there becomes subscribable here without a second list to keep in step: security
events (sign-ins, credential changes, keys, team changes) and resource events
(visitor.created, chat.message.created, …), plus webhook.test, which only SendTestEvent makes.

A few types are left out on purpose: bookkeeping that is no business event for a receiver,
or that fires on every request and would only be noise or load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from palisade_api.audit.v1 import events_pb2

TEST_EVENT_TYPE = "webhook.test"
MAX_EVENT_TYPES = 100

# Not published: why, per type.
UNPUBLISHED = frozenset(
    {
        "session.refreshed",  # every access-token refresh: high volume, no news
        "notice.sent",  # the record that a security email went out, not an event of its own
        "auth.recent_auth_required",  # a step-up prompt, not an action
        "apikey.recent_auth_required",  # same
        "session.mfa_required",  # the middle of a sign-in; its outcome is the event
        "mfa.totp_enrollment_started",  # an unconfirmed start; mfa.totp_enabled is the event
        "email.verification_sent",  # mail bookkeeping
    }
)


@dataclass(frozen=True, slots=True)
class EventType:
    type: str
    description: str


def _load() -> Mapping[str, EventType]:
    types: dict[str, EventType] = {}
    for value in events_pb2.EventType.DESCRIPTOR.values:
        if value.number == 0:
            continue
        option = value.GetOptions().Extensions[events_pb2.event_type]
        if option.name and option.name not in UNPUBLISHED:
            types[option.name] = EventType(option.name, option.description)
    if TEST_EVENT_TYPE not in types:
        raise ValueError(f"events.proto has no {TEST_EVENT_TYPE}")
    return MappingProxyType(dict(sorted(types.items())))


# Sorted by type, the order the API lists them in.
EVENT_TYPES: Mapping[str, EventType] = _load()


def is_published(event_type: str) -> bool:
    return event_type in EVENT_TYPES
