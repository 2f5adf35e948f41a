"""Review finding (issue 14): who may shred a visitor's subject key.

Crypto's ShredSubject takes any subject from any service with an edge to crypto (auth, apikeys,
audit, webhooks, visitors): the servicer only requires a service caller. A visitor's erasure is
irreversible and is the visitors service's decision (after its own checks: workspace, mode,
secret key or person), but a compromised or buggy apikeys or webhooks service can shred
`visitor:vis_...` (and any `user:...`) directly, destroying PII it never held. Encrypt may name
any subject (one person's data spread over services must die with one shred); ShredSubject
should not: the subject's namespace names its owner (visitor: -> visitors, user: -> auth).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_harness import code_of

from palisade.common.caller import AssertionSigner
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.visitors.pii import subject_of
from palisade_api.crypto.v1 import crypto_pb2, crypto_pb2_grpc
from palisade_api.visitors.v1 import visitors_pb2 as pb

from .conftest import new_workspace

SHRED = "/palisade.crypto.v1.CryptoService/ShredSubject"


async def test_review_only_visitors_may_shred_a_visitors_subject(harness_sqlite) -> None:
    harness = harness_sqlite
    ws = new_workspace()
    made = await harness.create(harness.person(ws), name="Ada", email="ada@example.com")
    master = read_document(harness.crypto_settings.resolved_edge_keys_master_file())
    signer = AssertionSigner(
        keys=KeySource.from_master(master, "webhooks"), clock=harness.clock, ttl_seconds=60
    )
    channel = insecure_channel(harness.crypto.running.target)
    webhooks = ServiceIdentity(name="webhooks", signer=signer)
    try:
        # The raw stub: the status and the stable code as crypto answers them.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await crypto_pb2_grpc.CryptoServiceStub(channel).ShredSubject(
                crypto_pb2.ShredSubjectRequest(subject=subject_of(made.id)),
                metadata=webhooks.metadata("crypto", SHRED),
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(caught.value) == "subject_not_owned"
    finally:
        await channel.close(None)
    got = await harness.stub.GetVisitor(
        pb.GetVisitorRequest(id=made.id), metadata=harness.person(ws)
    )
    assert got.name == "Ada"
