"""Review finding (issue 14): the visitors service fails open on an API key's missing claims.

palisade.visitors.access says its checks "repeat what a forged or misrouted call would need to
get past, so a bug there does not open the data here", but an `apikey:` caller whose assertion
carries no key type (`ktp`) is taken for a secret key (`caller.key_type == "publishable"` is
False), and one with no key mode (`kmd`) for a live key. A gateway build, a replica mid-upgrade
(the claim is new in 7f89f06) or another delegating edge that leaves them out gives a
publishable key secret-key powers here (erasure; its messages shown as the agent's) and a
test-mode key live data. An API key's assertion without both claims should be refused.
"""

from __future__ import annotations

import secrets

import grpc
import pytest
from grpc_harness import code_of

from palisade_api.visitors.v1 import visitors_pb2 as pb

from .conftest import ALL_SCOPES, new_workspace

DENIED = grpc.StatusCode.PERMISSION_DENIED


def _key_without(harness, ws: str, missing: str) -> tuple[tuple[str, str], ...]:
    claims = {
        "principal": f"apikey:key_{secrets.token_hex(16)}",
        "workspace_id": ws,
        "scopes": list(ALL_SCOPES),
        "key_mode": "live",
        "key_type": "secret",
        "acting_user_id": "usr_alice",
    }
    del claims[missing]
    return harness.signing.marker("gateway", **claims)


async def test_review_an_api_key_without_a_key_type_may_not_erase(harness) -> None:
    ws = new_workspace()
    made = await harness.create(harness.person(ws), name="Ada")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.EraseVisitor(
            pb.EraseVisitorRequest(id=made.id), metadata=_key_without(harness, ws, "key_type")
        )
    assert caught.value.code() == DENIED
    assert code_of(caught.value) == "key_claims_missing"
    assert (await harness.row(made.id)).erased_at is None


async def test_review_an_api_key_without_a_key_mode_reads_nothing(harness) -> None:
    ws = new_workspace()
    made = await harness.create(harness.person(ws), name="Ada")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.stub.GetVisitor(
            pb.GetVisitorRequest(id=made.id), metadata=_key_without(harness, ws, "key_mode")
        )
    assert caught.value.code() == DENIED
    assert code_of(caught.value) == "key_claims_missing"


@pytest.mark.parametrize("missing", ["key_type", "key_mode"])
async def test_review_an_api_key_without_its_claims_may_not_create(harness, missing: str) -> None:
    # CreateVisitor is open to publishable keys: the check comes before that, too.
    ws = new_workspace()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await harness.create(_key_without(harness, ws, missing), name="Ada")
    assert caught.value.code() == DENIED
    assert code_of(caught.value) == "key_claims_missing"
    assert await harness.rows() == []
