"""Exporting a workspace's log for SIEMs: JSON lines (the API's Event, plus its place in the
chain) or OCSF 1.x events (class and activity from the catalogue in events.proto)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict

from palisade.audit.catalogue import EVENT_TYPES
from palisade.audit.messages import event_message
from palisade.audit.model import StoredEvent
from palisade.audit.pii import PiiVault, RevealedPii
from palisade.audit.store import AuditStore

OCSF_VERSION = "1.1.0"
_CATEGORY_NAMES = {
    3: "Identity & Access Management",
    4: "Network Activity",
    6: "Application Activity",
}
# Events decrypted per call to crypto.
_BATCH = 300


@dataclass(frozen=True)
class ExportRange:
    since: datetime | None = None
    until: datetime | None = None

    def holds(self, moment: datetime) -> bool:
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment < self.until


def _millis(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp() * 1000)


def jsonl_record(stored: StoredEvent, pii: RevealedPii) -> dict[str, Any]:
    record = MessageToDict(event_message(stored, pii))
    record["sequence"] = stored.sealed.seq
    record["prevHash"] = stored.sealed.prev_hash.hex()
    record["hash"] = stored.hash.hex()
    return record


def _ocsf_actor(actor: str) -> dict[str, Any]:
    kind, _, identifier = actor.partition(":")
    if kind == "user":
        return {"user": {"uid": identifier, "type": "User", "type_id": 1}}
    if kind == "apikey":
        return {"user": {"uid": identifier, "type": "Other", "type_id": 99}, "app_name": "api_key"}
    if kind == "service":
        return {"app_name": identifier, "user": {"type": "System", "type_id": 3}}
    return {"user": {"type": "Other", "type_id": 99, "name": actor}}


def ocsf_record(stored: StoredEvent, pii: RevealedPii) -> dict[str, Any]:
    sealed = stored.sealed
    info = EVENT_TYPES[sealed.type]
    success = sealed.outcome == "success"
    record: dict[str, Any] = {
        "class_uid": info.ocsf_class_uid,
        "class_name": info.ocsf_class_name,
        "category_uid": info.ocsf_category_uid,
        "category_name": _CATEGORY_NAMES.get(info.ocsf_category_uid, "Other"),
        "activity_id": info.ocsf_activity_id,
        "activity_name": info.ocsf_activity,
        "type_uid": info.ocsf_type_uid,
        "type_name": f"{info.ocsf_class_name}: {info.ocsf_activity}",
        "time": _millis(sealed.occurred_at),
        "severity_id": 1 if success else 3,
        "severity": "Informational" if success else "Medium",
        "status_id": 1 if success else 2,
        "status": "Success" if success else "Failure",
        "message": info.description,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": sealed.event_id,
            "event_code": sealed.type,
            "log_name": "palisade-security-log",
            "logged_time": _millis(sealed.recorded_at),
            "sequence": sealed.seq,
            "tenant_uid": sealed.workspace_id,
            "product": {
                "name": "Palisade",
                "vendor_name": "Palisade",
                "feature": {"name": sealed.source},
            },
        },
        "actor": _ocsf_actor(sealed.actor),
        "unmapped": {
            "details": json.loads(sealed.details),
            "subject": sealed.subject,
            "erased": pii.erased,
            "hash": stored.hash.hex(),
            "prev_hash": sealed.prev_hash.hex(),
        },
    }
    if sealed.reason:
        record["status_detail"] = sealed.reason
    if sealed.subject.startswith("user:"):
        record["user"] = {"uid": sealed.subject.partition(":")[2], "type": "User", "type_id": 1}
    endpoint: dict[str, Any] = {}
    if pii.ip:
        endpoint["ip"] = pii.ip
    if pii.location.known:
        endpoint["location"] = {"country": pii.location.country, "city": pii.location.city}
    if sealed.device_browser or sealed.device_os:
        endpoint["os"] = {"name": sealed.device_os or "Unknown", "type": sealed.device_kind}
    if endpoint:
        record["src_endpoint"] = endpoint
    if pii.user_agent:
        record["http_request"] = {"user_agent": pii.user_agent}
    return record


async def export_events(
    store: AuditStore, vault: PiiVault, workspace_id: str, selected: ExportRange
) -> AsyncIterator[tuple[StoredEvent, RevealedPii]]:
    """The chain's events in chain order (within the range), PII decrypted in batches."""
    after = (0, 0)
    while True:
        async with store.transaction() as tx:
            page = await tx.chain_events(workspace_id, after=after, limit=_BATCH)
        chosen = [e for e in page if selected.holds(e.sealed.occurred_at)]
        revealed = await vault.reveal([e.sealed for e in chosen])
        for event, pii in zip(chosen, revealed, strict=True):
            yield event, pii
        if len(page) < _BATCH:
            return
        after = (page[-1].sealed.seq, page[-1].position)
