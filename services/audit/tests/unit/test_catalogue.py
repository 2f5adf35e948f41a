"""The event catalogue (events.proto) covers every event type the code base emits.

The forwarder ships every outbox row to Ingest, which refuses types outside the catalogue: a
type emitted somewhere but missing here would be set aside instead of logged. This scans the
source of every service and of palisade.common for event types (string literals of an event
namespace, and whatever SecurityEvent(type=...) is given) and fails on any the catalogue lacks.
Ingest also refuses a type from a service that is not one of its emitters, so the same scan
checks that every service's code names only types that list it (and palisade.common, shared by
all, none).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from palisade.audit.catalogue import EVENT_TYPES, OCSF_CLASS_NAMES, may_emit

ROOT = Path(__file__).resolve().parents[4]
SOURCES = [
    *sorted(ROOT.glob("services/*/src/**/*.py")),
    *sorted(ROOT.glob("libs/common/src/**/*.py")),
]
# Services that emit events and are not built yet (their types are in the catalogue already).
PLANNED_EMITTERS = {"webhooks"}
DOTTED = re.compile(r"[a-z][a-z_]*(\.[a-z][a-z_]*)+")
# Namespaces of event types: any dotted literal starting with one of these is an event type.
NAMESPACES = {name.split(".")[0] for name in EVENT_TYPES}
# From HTTP-API.md's security log section and the issues that add events (13-15).
REQUIRED = {
    "session.login_succeeded",
    "session.login_failed",
    "mfa.failed",
    "session.refresh_reuse_detected",
    "session.new_ip",
    "password.changed",
    "password.reset",
    "email.changed",
    "passkey.enrolled",
    "apikey.created",
    "apikey.rotated",
    "apikey.revoked",
    "apikey.expired",
    "member.invited",
    "member.removed",
    "account.deleted",
    "visitor.created",
    "visitor.erased",
    "chat.created",
    "chat.message.created",
    "webhook.created",
    "webhook.test",
}


def _literals_and_type_arguments(path: Path) -> tuple[set[str], list[str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    literals: set[str] = set()
    dynamic: list[str] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and DOTTED.fullmatch(node.value)
            and node.value.split(".")[0] in NAMESPACES
        ):
            literals.add(node.value)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "SecurityEvent":
            for keyword in node.keywords:
                if keyword.arg != "type":
                    continue
                value = keyword.value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    literals.add(value.value)
                elif not isinstance(value, ast.Name):
                    # An f-string or an expression: a type no scan can check.
                    dynamic.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return literals, dynamic


def test_every_emitted_type_is_in_the_catalogue() -> None:
    assert len(SOURCES) > 100  # the scan sees the code base
    emitted: set[str] = set()
    dynamic: list[str] = []
    for path in SOURCES:
        found, computed = _literals_and_type_arguments(path)
        emitted |= found
        dynamic += computed
    assert "session.login_succeeded" in emitted
    assert "apikey.created" in emitted
    assert sorted(emitted - set(EVENT_TYPES)) == []
    assert dynamic == [], "SecurityEvent(type=...) must be a literal or a variable"


def test_the_specified_types_are_in_the_catalogue() -> None:
    assert sorted(REQUIRED - set(EVENT_TYPES)) == []


def test_every_type_maps_to_an_ocsf_class_and_activity() -> None:
    for info in EVENT_TYPES.values():
        assert info.ocsf_class_uid in OCSF_CLASS_NAMES
        assert 1 <= info.ocsf_activity_id <= 99
        assert info.ocsf_activity
        assert info.description
        assert info.ocsf_type_uid == info.ocsf_class_uid * 100 + info.ocsf_activity_id
    assert EVENT_TYPES["session.login_succeeded"].ocsf_class_uid == 3002
    assert EVENT_TYPES["password.reset"].ocsf_class_uid == 3001


def _service_of(path: Path) -> str:
    """The service whose code this is ("common" for palisade.common)."""
    parts = path.relative_to(ROOT).parts
    return parts[1] if parts[0] == "services" else "common"


def test_every_type_has_an_emitter_that_exists() -> None:
    services = {p.name for p in (ROOT / "services").iterdir() if (p / "src").is_dir()}
    for info in EVENT_TYPES.values():
        assert info.emitters, info.name
        assert info.emitters <= services | PLANNED_EMITTERS, info.name
    assert EVENT_TYPES["session.login_succeeded"].emitters == {"auth"}
    assert EVENT_TYPES["apikey.created"].emitters == {"apikeys"}
    assert EVENT_TYPES["visitor.created"].emitters == {"visitors"}
    assert EVENT_TYPES["webhook.created"].emitters == {"webhooks"}


def test_each_service_emits_only_types_that_list_it() -> None:
    wrong: list[str] = []
    seen: set[str] = set()
    for path in SOURCES:
        service = _service_of(path)
        found, _ = _literals_and_type_arguments(path)
        for event_type in found & set(EVENT_TYPES):
            seen.add(service)
            if not may_emit(service, event_type):
                wrong.append(
                    f"{path.relative_to(ROOT)}: {event_type} (emitters: "
                    f"{sorted(EVENT_TYPES[event_type].emitters)})"
                )
    assert {"auth", "apikeys"} <= seen  # the scan sees the emitting services
    assert wrong == [], "a service names an event type whose emitters do not list it"
