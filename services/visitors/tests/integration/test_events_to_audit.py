"""visitor.created and visitor.erased reach the security log exactly once, through the outbox
and palisade.common.audit_forwarder, as audit's own Ingest validation would accept them.

The audit stand-in verifies the caller assertion as a real service does (only visitors' key
for the visitors->audit edge gets through) and runs each event through audit's real
validate() (catalogue, emitters, actor and subject forms), deduplicating by event id."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
from ports import port_for_later
from prometheus_client import CollectorRegistry

from palisade.audit.ingest.validation import validate
from palisade.common.caller import AssertionVerifier, require_service_caller
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_server import run_server
from palisade.common.settings import CommonSettings
from palisade_api.audit.v1 import audit_pb2, audit_pb2_grpc
from palisade_api.visitors.v1 import visitors_pb2 as pb

from .conftest import new_workspace


class RecordingAudit(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.events: dict[str, Any] = {}
        self.deliveries = 0
        self.sources: set[str] = set()

    async def Ingest(self, request: Any, context: Any) -> audit_pb2.IngestResponse:
        caller = require_service_caller()
        self.sources.add(caller.principal)
        latest = self.clock.now() + timedelta(minutes=5)
        stored = duplicates = 0
        for index, event in enumerate(request.events):
            validate(event, index, source=caller.issuer, latest=latest)
            self.deliveries += 1
            if event.event_id in self.events:
                duplicates += 1
            else:
                self.events[event.event_id] = event
                stored += 1
        return audit_pb2.IngestResponse(stored=stored, duplicates=duplicates)


def _free_port() -> int:
    """A port for a server started later: below the ephemeral range, so no client
    connection takes it first (ports.port_for_later)."""
    return port_for_later()


@asynccontextmanager
async def _audit(harness, port: int):
    servicer = RecordingAudit(harness.clock)

    def add(server: grpc.aio.Server) -> list[str]:
        audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server)
        return [audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name]

    master = read_document(harness.crypto_settings.resolved_edge_keys_master_file())
    verifier = AssertionVerifier(keys=KeySource.from_master(master, "audit"), clock=harness.clock)
    settings = CommonSettings(data_dir=harness.settings.data_dir, grpc_port=port, metrics_port=0)
    async with run_server(
        name="audit",
        settings=settings,
        verifier=verifier,
        registry=CollectorRegistry(),
        add_servicers=add,
    ):
        yield servicer


async def test_visitor_events_reach_audit_once(visitors_factory, sqlite_url) -> None:
    port = _free_port()
    overrides = {"audit_target": f"127.0.0.1:{port}", "audit_poll_seconds": 0.05}
    async with visitors_factory(sqlite_url, **overrides) as harness, _audit(harness, port) as audit:
        ws = new_workspace()
        made = await harness.create(harness.key(ws), name="Ada", email="ada@example.com")
        await harness.stub.EraseVisitor(
            pb.EraseVisitorRequest(id=made.id), metadata=harness.key(ws)
        )
        async with asyncio.timeout(20):
            while True:  # the forwarder's own task ships them, on its own timer
                pending = [e for e in await harness.events() if e.forwarded_at is None]
                if len(audit.events) >= 2 and not pending:
                    break
                await asyncio.sleep(0.05)
        types = sorted(e.type for e in audit.events.values())
        assert types == ["visitor.created", "visitor.erased"]
        assert audit.deliveries == 2  # once each, none sent twice
        assert audit.sources == {"service:visitors"}
        for event in audit.events.values():
            assert event.workspace_id == ws
            assert event.subject == f"visitor:{made.id}"
            assert "Ada" not in str(event)
            assert "ada@example.com" not in str(event)
