"""The event types workspaces may subscribe to with webhooks, read from the security log's
catalogue (protos/palisade/audit/v1/events.proto).

One reader for the two places that publish the list: the webhooks service
(`/v1/webhook-event-types`, and what an endpoint may subscribe to) and the gateway's OpenAPI
document (its 3.1 `webhooks` section, one entry per type). A type is published unless its
catalogue entry sets `webhooks_excluded`, so a new event type becomes subscribable, and
documented, without a second list to keep in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from palisade_api.audit.v1 import events_pb2


def _name_of(value: int) -> str:
    descriptor = events_pb2.EventType.DESCRIPTOR.values_by_number[value]
    name: str = descriptor.GetOptions().Extensions[events_pb2.event_type].name
    return name


# Made only by SendTestEvent, for one endpoint; its data differs from the security events'.
# (Named through the catalogue, not spelled here: palisade.common emits no event itself.)
TEST_EVENT_TYPE = _name_of(events_pb2.EVENT_TYPE_WEBHOOK_TEST)


@dataclass(frozen=True, slots=True)
class PublishedEventType:
    type: str
    description: str


def _load() -> tuple[Mapping[str, PublishedEventType], frozenset[str]]:
    published: dict[str, PublishedEventType] = {}
    excluded: set[str] = set()
    for value in events_pb2.EventType.DESCRIPTOR.values:
        if value.number == 0:
            continue
        option = value.GetOptions().Extensions[events_pb2.event_type]
        if not option.name:
            continue
        if option.webhooks_excluded:
            excluded.add(option.name)
        else:
            published[option.name] = PublishedEventType(option.name, option.description)
    if TEST_EVENT_TYPE not in published:
        raise ValueError(f"events.proto does not publish {TEST_EVENT_TYPE}")
    return MappingProxyType(dict(sorted(published.items()))), frozenset(excluded)


# Sorted by type, the order the API lists them in; and the types kept from webhooks.
PUBLISHED_EVENT_TYPES, WEBHOOKS_EXCLUDED = _load()
