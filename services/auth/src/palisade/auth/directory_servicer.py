"""Thin gRPC adapter for DirectoryService (directory.proto): which workspaces exist, for audit.

The audit service refuses events for a workspace auth never created; it asks here, for the
workspaces of each batch it has not seen before (and remembers the answers: ids are never
reused). Only audit may ask: nobody else needs to probe which workspace ids exist.
"""

from __future__ import annotations

import re
from typing import Any

import grpc
from sqlalchemy import select

from palisade.auth.store import AuthStore, workspaces
from palisade.common.caller import require_service_caller
from palisade.common.errors import InvalidArgument, PermissionDenied
from palisade_api.auth.v1 import directory_pb2 as pb
from palisade_api.auth.v1 import directory_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DirectoryService"].full_name
AUDIT = "service:audit"
MAX_IDS = 1000
_WORKSPACE_ID = re.compile(r"ws_[0-9a-f]{32}")


class DirectoryServicer(directory_pb2_grpc.DirectoryServiceServicer):
    def __init__(self, *, store: AuthStore) -> None:
        self._store = store

    async def CheckWorkspaces(
        self, request: pb.CheckWorkspacesRequest, context: Context
    ) -> pb.CheckWorkspacesResponse:
        if require_service_caller().principal != AUDIT:
            raise PermissionDenied("only audit may call this method")
        if len(request.workspace_ids) > MAX_IDS:
            raise InvalidArgument(f"at most {MAX_IDS} workspace ids in one call")
        # An id not of the workspace format names none (and never reaches the database).
        wanted = sorted({i for i in request.workspace_ids if _WORKSPACE_ID.fullmatch(i)})
        if not wanted:
            return pb.CheckWorkspacesResponse()
        async with self._store.transaction() as tx:
            rows = await tx.conn.execute(select(workspaces.c.id).where(workspaces.c.id.in_(wanted)))
            found = [r[0] for r in rows]
        return pb.CheckWorkspacesResponse(existing_workspace_ids=found)
