"""Crypto opens, rewraps and indexes only the caller's own data (issue 9 item 14).

The first part of the associated data (or blind-index context) must name the calling service,
the verified assertion's issuer: the gateway cannot decrypt auth's TOTP secrets, and no service
can compute blind indexes in another's context. Refusals are PERMISSION_DENIED, code
associated_data_not_yours, and name only the item's index.
"""

from __future__ import annotations

import grpc
import pytest

from palisade.common.aad import associated_data
from palisade.common.edge_keys import KeySource
from palisade.common.errors import ERROR_CODE_METADATA_KEY
from palisade_api.crypto.v1 import crypto_pb2 as pb

pytestmark = pytest.mark.postgres

TOTP_AAD = associated_data("auth", "user", "usr_1", "totp_secret")
SECRET = b"JBSWY3DPEHPK3PXP"


async def _refusal(call) -> tuple[grpc.StatusCode, str | None, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    code = dict(error.trailing_metadata() or ()).get(ERROR_CODE_METADATA_KEY)
    return error.code(), code, error.details() or ""


async def test_the_gateway_cannot_decrypt_auths_totp_secret(crypto) -> None:
    [ciphertext] = (
        await crypto.stub.Encrypt(
            pb.EncryptRequest(items=[pb.EncryptItem(plaintext=SECRET, associated_data=TOTP_AAD)]),
            metadata=crypto.metadata("auth"),
        )
    ).ciphertexts
    request = pb.DecryptRequest(
        items=[pb.DecryptItem(ciphertext=ciphertext, associated_data=TOTP_AAD)]
    )
    # Over a gateway->crypto edge (which production does not even have), validly signed:
    status, code, details = await _refusal(
        crypto.stub.Decrypt(request, metadata=crypto.metadata("gateway"))
    )
    assert (status, code) == (grpc.StatusCode.PERMISSION_DENIED, "associated_data_not_yours")
    assert details.startswith("item 0:")
    assert "auth" not in details
    assert "totp" not in details
    status, code, _ = await _refusal(
        crypto.stub.Rewrap(
            pb.RewrapRequest(
                items=[pb.DecryptItem(ciphertext=ciphertext, associated_data=TOTP_AAD)]
            ),
            metadata=crypto.metadata("visitors"),
        )
    )
    assert (status, code) == (grpc.StatusCode.PERMISSION_DENIED, "associated_data_not_yours")
    # Auth itself still can.
    reply = await crypto.stub.Decrypt(request, metadata=crypto.metadata("auth"))
    assert list(reply.plaintexts) == [SECRET]


def test_in_production_the_gateway_holds_no_key_for_crypto(crypto) -> None:
    gateway = KeySource.from_master(crypto.master, "gateway")  # the real edge list
    assert "crypto" not in gateway.current.signing


async def test_no_service_can_blind_index_in_anothers_context(crypto) -> None:
    def request(context: bytes) -> pb.BlindIndexRequest:
        item = pb.BlindIndexItem(
            value="ada@example.com", normalization=pb.NORMALIZATION_EMAIL, context=context
        )
        return pb.BlindIndexRequest(items=[item])

    for context in (b"auth/user.email", associated_data("auth", "user.email"), b"user.email"):
        status, code, _ = await _refusal(
            crypto.stub.BlindIndex(request(context), metadata=crypto.metadata("visitors"))
        )
        assert (status, code) == (grpc.StatusCode.PERMISSION_DENIED, "associated_data_not_yours")
    mine = await crypto.stub.BlindIndex(
        request(b"auth/user.email"), metadata=crypto.metadata("auth")
    )
    assert mine.results[0].tokens


async def test_a_service_cannot_encrypt_data_that_passes_for_anothers(crypto) -> None:
    items = [
        pb.EncryptItem(plaintext=b"ok", associated_data=associated_data("visitors", "v_1")),
        pb.EncryptItem(plaintext=b"forged", associated_data=TOTP_AAD),
    ]
    status, code, details = await _refusal(
        crypto.stub.Encrypt(pb.EncryptRequest(items=items), metadata=crypto.metadata("visitors"))
    )
    assert (status, code) == (grpc.StatusCode.PERMISSION_DENIED, "associated_data_not_yours")
    assert details.startswith("item 1:")
