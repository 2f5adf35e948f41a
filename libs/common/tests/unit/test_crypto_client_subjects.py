"""CryptoClient's subject support against a scripted CryptoService on a real gRPC port: what it
sends, and how it reads replies and errors (SubjectErased from the error code)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from palisade.common.caller import AssertionSigner
from palisade.common.clock import ManualClock
from palisade.common.crypto_client import CryptoClient, CryptoFailure, SubjectErased
from palisade.common.edge_keys import KeySource, ServiceKeys
from palisade.common.edges import Edge
from palisade.common.errors import ERROR_CODE_METADATA_KEY, InvalidArgument, Unavailable
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade_api.crypto.v1 import crypto_pb2 as pb
from palisade_api.crypto.v1 import crypto_pb2_grpc

ADA = "user:usr_1"


@dataclass
class Script:
    """What the fake crypto answers next, and what it was asked."""

    requests: list[Any] = field(default_factory=list)
    reply: Any = None
    abort: tuple[grpc.StatusCode, str, str] | None = None  # status, details, error code


class _FakeCrypto(crypto_pb2_grpc.CryptoServiceServicer):
    def __init__(self, script: Script) -> None:
        self._script = script

    async def _answer(self, request: Any, context: Any) -> Any:
        self._script.requests.append(request)
        if self._script.abort is not None:
            status, details, code = self._script.abort
            await context.abort(
                status, details, trailing_metadata=((ERROR_CODE_METADATA_KEY, code),)
            )
        return self._script.reply

    async def Encrypt(self, request: Any, context: Any) -> Any:
        return await self._answer(request, context)

    async def Decrypt(self, request: Any, context: Any) -> Any:
        return await self._answer(request, context)

    async def ShredSubject(self, request: Any, context: Any) -> Any:
        return await self._answer(request, context)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[CryptoClient, Script]]:
    script = Script()
    server = grpc.aio.server()
    crypto_pb2_grpc.add_CryptoServiceServicer_to_server(_FakeCrypto(script), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    keys = ServiceKeys.generate("visitors", (Edge("visitors", "crypto"),))
    signer = AssertionSigner(keys=KeySource.fixed(keys), clock=ManualClock(), ttl_seconds=60)
    identity = ServiceIdentity(name="visitors", signer=signer)
    try:
        async with insecure_channel(f"127.0.0.1:{port}") as channel:
            yield CryptoClient(channel=channel, identity=identity, timeout=5), script
    finally:
        await server.stop(None)


async def test_encrypt_names_the_subject_of_every_item_or_of_each(fake) -> None:
    client, script = fake
    script.reply = pb.EncryptResponse(ciphertexts=[b"c1", b"c2", b"c3"], key_version=1)
    out = await client.encrypt(
        [(b"a", b"x"), (b"b", b"y", "visitor:vis_1"), (b"c", b"z")], subject=ADA
    )
    assert out == [b"c1", b"c2", b"c3"]
    [request] = script.requests
    assert [i.subject for i in request.items] == [ADA, "visitor:vis_1", ADA]
    assert [i.plaintext for i in request.items] == [b"a", b"b", b"c"]
    await client.encrypt([(b"a", b"x")])
    assert script.requests[1].items[0].subject == ""  # no subject: the keyring's own key


async def test_decrypt_tolerating_erased_items_answers_none_for_them(fake) -> None:
    client, script = fake
    script.reply = pb.DecryptResponse(plaintexts=[b"a", b"", b"c"], erased=[False, True, False])
    out = await client.decrypt([(b"1", b"x"), (b"2", b"y"), (b"3", b"z")], tolerate_erased=True)
    assert out == [b"a", None, b"c"]
    assert script.requests[0].tolerate_erased is True
    script.reply = pb.DecryptResponse(plaintexts=[b"a"])
    assert await client.decrypt([(b"1", b"x")]) == [b"a"]
    assert script.requests[1].tolerate_erased is False


async def test_a_reply_without_erased_flags_is_not_trusted(fake) -> None:
    """A crypto that ignored tolerate_erased would return b"" that looks like data."""
    client, script = fake
    script.reply = pb.DecryptResponse(plaintexts=[b"a", b""])
    with pytest.raises(CryptoFailure):
        await client.decrypt([(b"1", b"x"), (b"2", b"y")], tolerate_erased=True)


@pytest.mark.parametrize("operation", ["encrypt", "decrypt"])
async def test_subject_erased_is_its_own_exception(fake, operation) -> None:
    client, script = fake
    script.abort = (
        grpc.StatusCode.FAILED_PRECONDITION,
        "item 1: the data subject has been erased",
        "subject_erased",
    )
    with pytest.raises(SubjectErased) as caught:
        await getattr(client, operation)([(b"1", b"x"), (b"2", b"y")])
    assert caught.value.code == "subject_erased"
    assert caught.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message == "item 1: the data subject has been erased"


async def test_other_precondition_failures_stay_integrity_faults(fake) -> None:
    client, script = fake
    script.abort = (grpc.StatusCode.FAILED_PRECONDITION, "item 0: retired", "retired_key_version")
    with pytest.raises(CryptoFailure) as caught:
        await client.decrypt([(b"1", b"x")])
    assert not isinstance(caught.value, SubjectErased)


async def test_shred_subject(fake) -> None:
    client, script = fake
    script.reply = pb.ShredSubjectResponse(shredded=True)
    assert await client.shred_subject(ADA) is True
    assert script.requests[0].subject == ADA
    script.reply = pb.ShredSubjectResponse(shredded=False)
    assert await client.shred_subject(ADA) is False
    script.abort = (grpc.StatusCode.INVALID_ARGUMENT, "bad subject", "invalid_subject")
    with pytest.raises(InvalidArgument):
        await client.shred_subject("nobody")
    script.abort = (grpc.StatusCode.UNAVAILABLE, "down", "unavailable")
    with pytest.raises(Unavailable):
        await client.shred_subject(ADA)
