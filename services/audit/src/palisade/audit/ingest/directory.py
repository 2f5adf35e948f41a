"""Which workspaces exist: events for a workspace auth never created are refused.

WorkspaceDirectory is the interface; AuthWorkspaceDirectory asks auth's DirectoryService, and
CachedWorkspaceDirectory remembers every positive answer (workspace ids are never reused, so a
workspace that existed once is a valid home for events forever). An unreachable auth is an
outage (UNAVAILABLE: the forwarder retries), never a reason to accept an unknown workspace.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

import grpc

from palisade.audit.errors import DirectoryUnavailable
from palisade.common.grpc_client import ServiceIdentity
from palisade_api.auth.v1 import directory_pb2, directory_pb2_grpc

log = logging.getLogger("palisade.audit.directory")

_CHECK = (
    "/"
    + directory_pb2.DESCRIPTOR.services_by_name["DirectoryService"].full_name
    + "/CheckWorkspaces"
)
# Ids per call to auth (its own limit).
MAX_IDS_PER_CALL = 1000


class WorkspaceDirectory(Protocol):
    async def existing(self, workspace_ids: Iterable[str]) -> set[str]:
        """The given ids that name a workspace; raises DirectoryUnavailable when it cannot
        tell."""
        ...


class AuthWorkspaceDirectory:
    """Auth's DirectoryService.CheckWorkspaces, as service:audit."""

    def __init__(
        self, *, channel: grpc.aio.Channel, identity: ServiceIdentity, timeout: float = 5.0
    ) -> None:
        self._stub = directory_pb2_grpc.DirectoryServiceStub(channel)
        self._identity = identity
        self._timeout = timeout

    async def existing(self, workspace_ids: Iterable[str]) -> set[str]:
        wanted = sorted(set(workspace_ids))
        found: set[str] = set()
        for start in range(0, len(wanted), MAX_IDS_PER_CALL):
            chunk = wanted[start : start + MAX_IDS_PER_CALL]
            try:
                reply = await self._stub.CheckWorkspaces(
                    directory_pb2.CheckWorkspacesRequest(workspace_ids=chunk),
                    metadata=self._identity.metadata("auth", _CHECK),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as error:
                # Whatever went wrong, the answer is unknown: never guess "exists".
                log.warning("workspace directory call failed", extra={"code": error.code().name})
                raise DirectoryUnavailable() from None
            asked = set(chunk)
            found.update(i for i in reply.existing_workspace_ids if i in asked)
        return found


class CachedWorkspaceDirectory:
    """Remembers workspaces known to exist (up to max_entries, least recently used dropped);
    asks the directory behind it only about the others."""

    def __init__(self, directory: WorkspaceDirectory, *, max_entries: int) -> None:
        self._directory = directory
        self._max = max_entries
        self._known: OrderedDict[str, None] = OrderedDict()

    async def existing(self, workspace_ids: Iterable[str]) -> set[str]:
        wanted = set(workspace_ids)
        known = {i for i in wanted if i in self._known}
        for workspace_id in known:
            self._known.move_to_end(workspace_id)
        unknown = wanted - known
        if not unknown:
            return known
        found = await self._directory.existing(unknown)
        if self._max:
            for workspace_id in found:
                self._known[workspace_id] = None
            while len(self._known) > self._max:
                self._known.popitem(last=False)
        return known | found
