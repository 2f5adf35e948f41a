"""Thin gRPC adapter for the audit service: proto <-> domain, caller checks, nothing else."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.audit.checkpoints.service import Checkpointer
from palisade.audit.checkpoints.signing_keys import ALGORITHM, SigningKeyHolder
from palisade.audit.errors import (
    BatchTooLarge,
    InvalidRange,
    NotSignedIn,
    RoleRequired,
    ServiceRequired,
    SubscriberRequired,
)
from palisade.audit.ingest.service import Ingestor
from palisade.audit.ingest.validation import validate_batch
from palisade.audit.messages import checkpoint_message, event_message
from palisade.audit.metrics import AuditMetrics
from palisade.audit.model import MANAGER_ROLES
from palisade.audit.queries.service import EventFilter, EventQueries
from palisade.audit.queries.stream import EventStream, parse_cursor
from palisade.common.caller import Caller, require_caller, require_service_caller
from palisade.common.clock import Clock
from palisade.common.devices import DeviceParser
from palisade.common.edges import Edge
from palisade.common.errors import PalisadeError
from palisade_api.audit.v1 import audit_pb2 as pb
from palisade_api.audit.v1 import audit_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
USER_PREFIX = "user:"


def _moment(ts: Timestamp) -> datetime:
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidRange("since and until must be moments between years 1 and 9999") from None


def _person(caller: Caller) -> str:
    if not caller.principal.startswith(USER_PREFIX):
        raise NotSignedIn()
    return caller.principal


def _as_seen_by(principal: str, message: pb.Event) -> pb.Event:
    """An event in a person's own log: another person's client (an admin who removed them,
    say) is theirs, not the reader's, so its IP, user agent, location and device are left out.
    An anonymous attempt on the reader's account keeps them: they are the attacker's, and the
    reader is the one who needs them."""
    if message.actor.type == "user" and f"{USER_PREFIX}{message.actor.id}" != principal:
        message.ip = ""
        message.user_agent = ""
        message.ClearField("location")
        message.ClearField("device")
    return message


def _manager(caller: Caller) -> tuple[str, str]:
    """(principal, workspace id) of an owner or admin behind this call."""
    principal = _person(caller)
    if not caller.workspace_id:
        raise NotSignedIn()
    if caller.role not in MANAGER_ROLES:
        raise RoleRequired()
    return principal, caller.workspace_id


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(
        self,
        *,
        ingestor: Ingestor,
        queries: EventQueries,
        stream: EventStream,
        checkpoints: Checkpointer,
        signing_keys: SigningKeyHolder,
        metrics: AuditMetrics,
        clock: Clock,
        edges: Sequence[Edge],
        max_batch_events: int,
        max_clock_skew_seconds: int,
        stream_subscribers: Sequence[str],
    ) -> None:
        self._ingestor = ingestor
        self._queries = queries
        self._stream = stream
        self._checkpoints = checkpoints
        self._signing_keys = signing_keys
        self._metrics = metrics
        self._clock = clock
        # Services that record events: every non-delegating edge into audit. The gateway's
        # edge (people's queries) never writes to the log or reads the stream.
        self._recorders = frozenset(
            e.issuer for e in edges if e.audience == "audit" and not e.delegates
        )
        # Subscribers: named in the settings and on such an edge.
        self._subscribers = frozenset(stream_subscribers) & self._recorders
        self._max_batch = max_batch_events
        self._devices = DeviceParser()
        self._skew = timedelta(seconds=max_clock_skew_seconds)

    def _recorder(self) -> str:
        caller = require_service_caller()
        if caller.issuer not in self._recorders or caller.principal != f"service:{caller.issuer}":
            raise ServiceRequired()
        return caller.issuer

    def _subscriber(self) -> str:
        caller = require_service_caller()
        if caller.issuer not in self._subscribers or caller.principal != f"service:{caller.issuer}":
            raise SubscriberRequired()
        return caller.issuer

    async def Ingest(self, request: pb.IngestRequest, context: Context) -> pb.IngestResponse:
        source = self._recorder()
        try:
            if len(request.events) > self._max_batch:
                raise BatchTooLarge(f"at most {self._max_batch} events in one batch")
            latest = self._clock.now() + self._skew
            valid = validate_batch(
                request.events, source=source, latest=latest, devices=self._devices
            )
            result = await self._ingestor.ingest(source, valid)
        except PalisadeError as error:
            if error.status == grpc.StatusCode.INVALID_ARGUMENT:
                self._metrics.rejected.labels(source, error.code).inc()
            raise
        return pb.IngestResponse(stored=result.stored, duplicates=result.duplicates)

    async def ListMyEvents(
        self, request: pb.ListMyEventsRequest, context: Context
    ) -> pb.ListEventsResponse:
        principal = _person(require_caller())
        page = await self._queries.mine(
            principal,
            EventFilter(type=request.type),
            size=request.page_size,
            token=request.page_token,
        )
        return pb.ListEventsResponse(
            events=[_as_seen_by(principal, event_message(e.stored, e.pii)) for e in page.events],
            next_page_token=page.next_token,
        )

    async def ListWorkspaceEvents(
        self, request: pb.ListWorkspaceEventsRequest, context: Context
    ) -> pb.ListEventsResponse:
        principal, workspace_id = _manager(require_caller())
        event_filter = EventFilter(
            type=request.type,
            actor=request.actor,
            subject=request.subject,
            since=_moment(request.since) if request.HasField("since") else None,
            until=_moment(request.until) if request.HasField("until") else None,
        )
        page = await self._queries.workspace(
            workspace_id,
            principal,
            event_filter,
            size=request.page_size,
            token=request.page_token,
        )
        return pb.ListEventsResponse(
            events=[event_message(e.stored, e.pii) for e in page.events],
            next_page_token=page.next_token,
        )

    async def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: Context
    ) -> pb.Checkpoint:
        _, workspace_id = _manager(require_caller())
        return checkpoint_message(await self._checkpoints.checkpoint(workspace_id))

    async def ListSigningKeys(
        self, request: pb.ListSigningKeysRequest, context: Context
    ) -> pb.ListSigningKeysResponse:
        require_caller()  # anyone: the gateway signs for anonymous clients
        keys = sorted(
            self._signing_keys.current.keys.values(), key=lambda k: (k.created_at, k.key_id)
        )
        return pb.ListSigningKeysResponse(
            keys=[
                pb.SigningKey(
                    key_id=k.key_id,
                    algorithm=ALGORITHM,
                    public_key=base64.b64encode(k.public_key).decode(),
                )
                for k in keys
            ]
        )

    async def StreamEvents(
        self, request: pb.StreamEventsRequest, context: Context
    ) -> AsyncIterator[pb.StreamedEvent]:
        self._subscriber()
        after = parse_cursor(request.after)
        start = after if after is not None else await self._stream.head()
        # Headers now: a subscriber "from now on" knows every event stored from here reaches it.
        await context.send_initial_metadata(())
        async for batch in self._stream.follow(start, include_pii=request.include_pii):
            for item in batch:
                yield pb.StreamedEvent(
                    cursor=item.position.cursor(), event=event_message(item.stored, item.pii)
                )
