"""Shipping outbox events to the audit service: the event as Ingest takes it, and the call.

An outbox row (palisade.common.outbox) becomes one palisade.audit.v1.IngestEvent. The payload's
`device` is not the raw User-Agent but the bounded description the emitting service made of
it ("Firefox 120 on Linux", palisade.common.client_text): it goes in the event's `device`, and
user_agent stays empty (no outbox holds one). Details become strings (true/false, decimal
integers; unset values are left out).

AuditIngestClient calls AuditService.Ingest as this service (its caller assertion on the
service->audit edge) and sorts what can go wrong into the two answers the forwarder acts on:
BatchRejected (audit refused an event of the batch for good: INVALID_ARGUMENT) and
IngestFailed (anything else: audit unreachable, slow, or not accepting us yet; try again).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.common.caller import NoEdgeKey
from palisade.common.errors import ERROR_CODE_METADATA_KEY
from palisade.common.grpc_client import ServiceIdentity
from palisade_api.audit.v1 import audit_pb2, audit_pb2_grpc

AUDIT_SERVICE = "audit"
INGEST_METHOD = "/" + audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name + "/Ingest"
# How an INVALID_ARGUMENT answer to Ingest names the refused event: its index in a trailer,
# and the message "events[<index>]: ...". Without either the forwarder halves the batch until
# it finds the event.
INVALID_ITEM_METADATA_KEY = "palisade-invalid-item"
_NAMED_ITEM = re.compile(r"events\[(\d{1,9})\]")
# A stable error code is short and plain; anything else is reported as this.
_UNNAMED_CODE = "invalid_argument"
_MAX_CODE_CHARS = 64


class UnreadableEvent(ValueError):
    """An outbox row that is no event Ingest could take (a payload that is not our JSON)."""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    event_id: str
    event_type: str
    occurred_at: datetime
    payload: str


def ingest_event(row: OutboxRow) -> audit_pb2.IngestEvent:
    """The row as Ingest takes it; UnreadableEvent if its payload cannot be read."""
    try:
        body = json.loads(row.payload)
    except ValueError:
        raise UnreadableEvent("payload is not JSON") from None
    if not isinstance(body, dict):
        raise UnreadableEvent("payload is not an object")
    details = body.get("details") or {}
    if not isinstance(details, Mapping):
        raise UnreadableEvent("details is not an object")
    occurred_at = Timestamp()
    occurred_at.FromDatetime(row.occurred_at)
    return audit_pb2.IngestEvent(
        event_id=row.event_id,
        type=row.event_type,
        occurred_at=occurred_at,
        workspace_id=_text(body.get("workspace_id")),
        actor=_text(body.get("actor")),
        subject=_text(body.get("subject")),
        ip=_text(body.get("ip")),
        device=_text(body.get("device")),
        outcome=_text(body.get("outcome")),
        reason=_text(body.get("reason")),
        details={str(k): _detail(v) for k, v in details.items() if v is not None},
    )


def without_pii(payload: str) -> str:
    """The payload with the client's IP and device removed (what stays once audit has them)."""
    body = json.loads(payload)
    body["ip"] = None
    body["device"] = None
    return json.dumps(body, sort_keys=True, ensure_ascii=True)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _detail(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class BatchRejected(Exception):
    """Audit refused the batch for an event it will never take (it stored none of them)."""

    def __init__(self, code: str, index: int | None) -> None:
        super().__init__(code)
        self.code = code
        self.index = index  # which event, when audit said so


class IngestFailed(Exception):
    """The batch did not get through, for a reason that time may mend; reason is a label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AuditSink(Protocol):
    async def ingest(self, events: Sequence[audit_pb2.IngestEvent]) -> None:
        """Stores the batch (idempotent by event id); BatchRejected or IngestFailed."""
        ...


class AuditIngestClient:
    """AuditService.Ingest, called as this service."""

    def __init__(
        self, *, channel: grpc.aio.Channel, identity: ServiceIdentity, timeout: float = 10.0
    ) -> None:
        self._stub = audit_pb2_grpc.AuditServiceStub(channel)
        self._identity = identity
        self._timeout = timeout

    async def ingest(self, events: Sequence[audit_pb2.IngestEvent]) -> None:
        try:
            metadata = self._identity.metadata(AUDIT_SERVICE, INGEST_METHOD)
        except NoEdgeKey:
            raise IngestFailed("no_edge_key") from None
        try:
            await self._stub.Ingest(
                audit_pb2.IngestRequest(events=list(events)),
                metadata=metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                trailer = _metadata(error)
                named = trailer.get(INVALID_ITEM_METADATA_KEY)
                raise BatchRejected(
                    _stable_code(trailer.get(ERROR_CODE_METADATA_KEY)),
                    _index(f"events[{named}]" if named else error.details() or "", len(events)),
                ) from None
            raise IngestFailed(error.code().name.lower()) from None
        except TimeoutError:
            raise IngestFailed("deadline_exceeded") from None


def _metadata(error: grpc.aio.AioRpcError) -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in error.trailing_metadata() or ():
        # Pairs at run time (grpc.aio.Metadata), whatever the stubs call them.
        key, value = cast(tuple[str, Any], entry)
        if isinstance(value, str):
            found.setdefault(key, value)
    return found


def _stable_code(code: str | None) -> str:
    if not code or len(code) > _MAX_CODE_CHARS or not code.replace("_", "").isalnum():
        return _UNNAMED_CODE
    return code if code.isascii() else _UNNAMED_CODE


def _index(message: str, size: int) -> int | None:
    named = _NAMED_ITEM.match(message)
    if named is None:
        return None
    index = int(named.group(1))
    return index if index < size else None
