"""DirectoryService.CheckWorkspaces: which workspace ids exist, for the audit service only."""

from __future__ import annotations

import grpc
import pytest

from palisade_api.auth.v1 import directory_pb2 as dpb
from palisade_api.auth.v1 import directory_pb2_grpc

UNKNOWN = "ws_" + "0" * 32


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get("palisade-error-code")


async def test_existing_workspaces_and_only_those(auth) -> None:
    first = await auth.sign_up("dir-a@example.com")
    second = await auth.sign_up("dir-b@example.com")
    async with auth.signing.channel(auth.servers[0].running.target) as channel:
        stub = directory_pb2_grpc.DirectoryServiceStub(channel)
        answer = await stub.CheckWorkspaces(
            dpb.CheckWorkspacesRequest(
                workspace_ids=[first.workspace_id, UNKNOWN, second.workspace_id, "not-an-id", ""]
            ),
            metadata=auth.signing.marker("audit"),
        )
        assert sorted(answer.existing_workspace_ids) == sorted(
            [first.workspace_id, second.workspace_id]
        )
        none = await stub.CheckWorkspaces(
            dpb.CheckWorkspacesRequest(workspace_ids=[UNKNOWN]),
            metadata=auth.signing.marker("audit"),
        )
        assert list(none.existing_workspace_ids) == []


@pytest.mark.parametrize("issuer", ["gateway", "apikeys"])
async def test_only_audit_may_ask(auth, issuer) -> None:
    created = await auth.sign_up("dir-c@example.com")
    async with auth.signing.channel(auth.servers[0].running.target) as channel:
        stub = directory_pb2_grpc.DirectoryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckWorkspaces(
                dpb.CheckWorkspacesRequest(workspace_ids=[created.workspace_id]),
                metadata=auth.signing.marker(issuer),
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as person:
            await stub.CheckWorkspaces(
                dpb.CheckWorkspacesRequest(workspace_ids=[created.workspace_id]),
                metadata=auth.signing.marker("gateway", principal=f"user:{created.user_id}"),
            )
        assert person.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_too_many_ids_in_one_call(auth) -> None:
    async with auth.signing.channel(auth.servers[0].running.target) as channel:
        stub = directory_pb2_grpc.DirectoryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckWorkspaces(
                dpb.CheckWorkspacesRequest(workspace_ids=[UNKNOWN] * 1001),
                metadata=auth.signing.marker("audit"),
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
