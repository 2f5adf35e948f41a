"""Thin gRPC adapter for VisitorsService: proto <-> domain, caller checks, nothing else."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from palisade.visitors.access import current_scope
from palisade.visitors.model import Visitor
from palisade.visitors.service import VisitorsService
from palisade_api.visitors.v1 import visitors_pb2 as pb
from palisade_api.visitors.v1 import visitors_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

READ, WRITE = "visitors:read", "visitors:write"


def visitor_proto(visitor: Visitor) -> pb.Visitor:
    created = Timestamp()
    created.FromDatetime(visitor.created_at)
    return pb.Visitor(
        id=visitor.id,
        name=visitor.name,
        email=visitor.email,
        phone=visitor.phone,
        created_at=created,
        test=visitor.test,
        erased=visitor.erased,
        source=visitor.source,
    )


class VisitorsServicer(visitors_pb2_grpc.VisitorsServiceServicer):
    def __init__(self, *, service: VisitorsService) -> None:
        self._service = service

    async def CreateVisitor(self, request: pb.CreateVisitorRequest, context: Context) -> pb.Visitor:
        # Publishable keys may: a website's chat widget creates its visitor.
        scope = current_scope(needs=WRITE, publishable_ok=True)
        visitor = await self._service.create(
            scope, name=request.name, email=request.email, phone=request.phone
        )
        return visitor_proto(visitor)

    async def GetVisitor(self, request: pb.GetVisitorRequest, context: Context) -> pb.Visitor:
        scope = current_scope(needs=READ)
        return visitor_proto(await self._service.get(scope, request.id))

    async def FindVisitors(
        self, request: pb.FindVisitorsRequest, context: Context
    ) -> pb.FindVisitorsResponse:
        scope = current_scope(needs=READ)
        found = await self._service.find(
            scope,
            email=request.email,
            phone=request.phone,
            requested_size=request.page_size,
            token=request.page_token,
        )
        return pb.FindVisitorsResponse(
            visitors=[visitor_proto(v) for v in found.visitors], next_page_token=found.next_token
        )

    async def EraseVisitor(
        self, request: pb.EraseVisitorRequest, context: Context
    ) -> pb.EraseVisitorResponse:
        scope = current_scope(needs=WRITE)
        await self._service.erase(scope, request.id)
        return pb.EraseVisitorResponse()
