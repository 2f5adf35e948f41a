"""A fake AuditService for the forwarder's tests: a real gRPC server on port 0 that verifies
the caller assertion, keeps what it stores by event id (as audit does), and can be told to be
away, to refuse an event, to lose its answer after storing, or to hold a call open."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from palisade.common.audit_ingest import INGEST_METHOD
from palisade.common.caller import CALLER_METADATA_KEY, AssertionVerifier
from palisade.common.errors import ERROR_CODE_METADATA_KEY
from palisade_api.audit.v1 import audit_pb2, audit_pb2_grpc


class FakeAudit(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, verifier: AssertionVerifier | None) -> None:
        # None until the test knows the keys (a service under test made them): till then
        # the fake answers UNAVAILABLE, as an audit service still starting would.
        self.verifier = verifier
        self.stored: list[audit_pb2.IngestEvent] = []  # in the order stored
        self.calls: list[list[str]] = []  # event ids of every call that got this far
        self.principals: list[str] = []
        self.refuse: dict[str, str] = {}  # event id -> error code
        self.name_the_item = True
        self.lose_answers = 0  # store, then answer UNAVAILABLE, this many times
        self.gate: asyncio.Event | None = None  # when set up, calls wait for it
        self.entered = asyncio.Event()
        self.active = 0
        self.most_active = 0

    @property
    def stored_ids(self) -> list[str]:
        return [event.event_id for event in self.stored]

    async def Ingest(
        self, request: audit_pb2.IngestRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> audit_pb2.IngestResponse:
        if self.verifier is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "starting")
        metadata = dict(context.invocation_metadata() or ())
        caller = self.verifier.verify(metadata.get(CALLER_METADATA_KEY), method=INGEST_METHOD)
        self.principals.append(caller.principal)
        ids = [event.event_id for event in request.events]
        self.calls.append(ids)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            self.entered.set()
            if self.gate is not None:
                await self.gate.wait()
            for index, event in enumerate(request.events):
                if event.event_id in self.refuse:
                    context.set_trailing_metadata(
                        ((ERROR_CODE_METADATA_KEY, self.refuse[event.event_id]),)
                    )
                    where = f"events[{index}]: " if self.name_the_item else ""
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, where + "refused")
            known = set(self.stored_ids)
            fresh = [event for event in request.events if event.event_id not in known]
            self.stored.extend(fresh)
            if self.lose_answers:
                self.lose_answers -= 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, "answer lost")
            return audit_pb2.IngestResponse(
                stored=len(fresh), duplicates=len(request.events) - len(fresh)
            )
        finally:
            self.active -= 1


class FakeAuditServer:
    """Serves a FakeAudit on 127.0.0.1; stop() and start() again keep the port."""

    def __init__(self, fake: FakeAudit) -> None:
        self.fake = fake
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        audit_pb2_grpc.add_AuditServiceServicer_to_server(self.fake, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
