"""The event catalogue, read from the protos (events.proto): one place for every event type.

Ingest accepts only these types, each only from the services listed as its emitters; exports
map them to their OCSF class and activity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from palisade_api.audit.v1 import events_pb2

# OCSF class names by class_uid (the classes events.proto uses).
OCSF_CLASS_NAMES: Mapping[int, str] = MappingProxyType(
    {
        3001: "Account Change",
        3002: "Authentication",
        3004: "Entity Management",
        3005: "User Access Management",
        3006: "Group Management",
        4009: "Email Activity",
        6003: "API Activity",
    }
)


@dataclass(frozen=True)
class EventTypeInfo:
    name: str
    ocsf_class_uid: int
    ocsf_activity_id: int
    ocsf_activity: str
    description: str
    # The services that may emit it (the name in their caller assertion's service:<name>).
    emitters: frozenset[str]

    @property
    def ocsf_class_name(self) -> str:
        return OCSF_CLASS_NAMES[self.ocsf_class_uid]

    @property
    def ocsf_category_uid(self) -> int:
        return self.ocsf_class_uid // 1000

    @property
    def ocsf_type_uid(self) -> int:
        return self.ocsf_class_uid * 100 + self.ocsf_activity_id


def _load() -> Mapping[str, EventTypeInfo]:
    types: dict[str, EventTypeInfo] = {}
    for value in events_pb2.EventType.DESCRIPTOR.values:
        if value.number == 0:
            continue
        option = value.GetOptions().Extensions[events_pb2.event_type]
        if not option.name or option.name in types:
            raise ValueError(f"events.proto: {value.name} has no name or a duplicate one")
        if option.ocsf_class not in OCSF_CLASS_NAMES or option.ocsf_activity_id <= 0:
            raise ValueError(f"events.proto: {value.name} has no OCSF class or activity")
        if not option.emitters:
            raise ValueError(f"events.proto: {value.name} names no service that emits it")
        types[option.name] = EventTypeInfo(
            name=option.name,
            ocsf_class_uid=int(option.ocsf_class),
            ocsf_activity_id=option.ocsf_activity_id,
            ocsf_activity=option.ocsf_activity,
            description=option.description,
            emitters=frozenset(option.emitters),
        )
    return MappingProxyType(types)


EVENT_TYPES: Mapping[str, EventTypeInfo] = _load()


def is_known(event_type: str) -> bool:
    return event_type in EVENT_TYPES


def may_emit(service: str, event_type: str) -> bool:
    """Whether the service may record events of this (known) type."""
    info = EVENT_TYPES.get(event_type)
    return info is not None and service in info.emitters


def emitted_by(service: str) -> frozenset[str]:
    """The types the service may record (one set lookup per event instead of two)."""
    return frozenset(name for name, info in EVENT_TYPES.items() if service in info.emitters)
