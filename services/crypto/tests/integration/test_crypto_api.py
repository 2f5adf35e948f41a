"""The crypto service over real gRPC: batched calls, rotation, errors as status codes."""

from __future__ import annotations

import grpc
import pytest

from palisade.common.aad import associated_data
from palisade.common.errors import ERROR_CODE_METADATA_KEY
from palisade_api.crypto.v1 import crypto_pb2 as pb

pytestmark = pytest.mark.postgres

PII = [b"Ada Lovelace", b"ada@example.com", b"+442079460958"]


def _aad(record: str, field: str) -> bytes:
    return associated_data("visitors", "ws_1", record, field)


def _encrypt_request(values: list[bytes], record: str = "v_1") -> pb.EncryptRequest:
    return pb.EncryptRequest(
        items=[
            pb.EncryptItem(plaintext=v, associated_data=_aad(record, f"f{i}"))
            for i, v in enumerate(values)
        ]
    )


def _decrypt_request(ciphertexts: list[bytes], record: str = "v_1") -> pb.DecryptRequest:
    return pb.DecryptRequest(
        items=[
            pb.DecryptItem(ciphertext=c, associated_data=_aad(record, f"f{i}"))
            for i, c in enumerate(ciphertexts)
        ]
    )


def _error_code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(ERROR_CODE_METADATA_KEY)


async def test_batched_round_trip(crypto) -> None:
    encrypted = await crypto.stub.Encrypt(_encrypt_request(PII), metadata=crypto.metadata())
    assert encrypted.key_version == 1
    assert len(encrypted.ciphertexts) == len(PII)
    for plaintext, ciphertext in zip(PII, encrypted.ciphertexts, strict=True):
        assert plaintext not in ciphertext
    decrypted = await crypto.stub.Decrypt(
        _decrypt_request(list(encrypted.ciphertexts)), metadata=crypto.metadata()
    )
    assert list(decrypted.plaintexts) == PII


async def test_a_thousand_fields_in_one_call(crypto) -> None:
    values = [f"visitor-{i}@example.com".encode() for i in range(1000)]
    encrypted = await crypto.stub.Encrypt(_encrypt_request(values), metadata=crypto.metadata())
    decrypted = await crypto.stub.Decrypt(
        _decrypt_request(list(encrypted.ciphertexts)), metadata=crypto.metadata()
    )
    assert list(decrypted.plaintexts) == values


async def test_ciphertext_moved_to_another_record_fails_without_output(crypto) -> None:
    encrypted = await crypto.stub.Encrypt(_encrypt_request(PII, "v_1"), metadata=crypto.metadata())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await crypto.stub.Decrypt(
            _decrypt_request(list(encrypted.ciphertexts), "v_2"), metadata=crypto.metadata()
        )
    assert caught.value.code() == grpc.StatusCode.DATA_LOSS
    assert _error_code(caught.value) == "ciphertext_tampered"
    assert "item 0" in (caught.value.details() or "")
    for plaintext in PII:
        assert plaintext.decode() not in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("request_factory", "status", "code"),
    [
        (
            lambda: pb.EncryptRequest(items=[pb.EncryptItem(plaintext=b"x")]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "missing_associated_data",
        ),
        (
            lambda: pb.EncryptRequest(
                items=[pb.EncryptItem(plaintext=b"x", associated_data=b"visitors/a")] * 1001
            ),
            grpc.StatusCode.OUT_OF_RANGE,
            "batch_too_large",
        ),
        (
            lambda: pb.DecryptRequest(
                items=[pb.DecryptItem(ciphertext=b"short", associated_data=b"visitors/a")]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "malformed_ciphertext",
        ),
        (
            lambda: pb.BlindIndexRequest(
                items=[pb.BlindIndexItem(value="x", context=b"visitors/c")]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_argument",
        ),
        (
            lambda: pb.BlindIndexRequest(
                items=[
                    pb.BlindIndexItem(
                        value="not an email",
                        normalization=pb.NORMALIZATION_EMAIL,
                        context=b"visitors/c",
                    )
                ]
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_value",
        ),
    ],
)
async def test_bad_requests_get_distinct_codes(crypto, request_factory, status, code) -> None:
    request = request_factory()
    method = {
        pb.EncryptRequest: crypto.stub.Encrypt,
        pb.DecryptRequest: crypto.stub.Decrypt,
        pb.BlindIndexRequest: crypto.stub.BlindIndex,
    }[type(request)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request, metadata=crypto.metadata())
    assert caught.value.code() == status
    assert _error_code(caught.value) == code


async def test_unknown_key_version_is_not_found(crypto) -> None:
    encrypted = await crypto.stub.Encrypt(_encrypt_request([b"x"]), metadata=crypto.metadata())
    forged = bytearray(encrypted.ciphertexts[0])
    forged[1:5] = (99).to_bytes(4, "big")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await crypto.stub.Decrypt(_decrypt_request([bytes(forged)]), metadata=crypto.metadata())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert _error_code(caught.value) == "unknown_key_version"


async def test_rotation_rewrap_and_retire(crypto) -> None:
    old = await crypto.stub.Encrypt(_encrypt_request(PII), metadata=crypto.metadata())
    crypto.server.keyring.update(
        lambda k: type(k)(data=k.data.rotated(crypto.clock.now()), index=k.index)
    )
    new = await crypto.stub.Encrypt(_encrypt_request(PII), metadata=crypto.metadata())
    assert (old.key_version, new.key_version) == (1, 2)
    assert all(c[1:5] == (2).to_bytes(4, "big") for c in new.ciphertexts)

    # Old data still decrypts: rotation needs no bulk re-encryption.
    decrypted = await crypto.stub.Decrypt(
        _decrypt_request(list(old.ciphertexts)), metadata=crypto.metadata()
    )
    assert list(decrypted.plaintexts) == PII

    rewrap_items = [
        pb.DecryptItem(ciphertext=c, associated_data=_aad("v_1", f"f{i}"))
        for i, c in enumerate([*old.ciphertexts[:2], new.ciphertexts[2]])
    ]
    rewrapped = await crypto.stub.Rewrap(
        pb.RewrapRequest(items=rewrap_items), metadata=crypto.metadata()
    )
    assert list(rewrapped.rewrapped) == [True, True, False]
    assert rewrapped.key_version == 2
    assert rewrapped.ciphertexts[2] == new.ciphertexts[2]
    for plaintext in PII:
        assert all(plaintext not in c for c in rewrapped.ciphertexts)  # no plaintext comes back

    crypto.server.keyring.update(lambda k: type(k)(data=k.data.retired_below(2), index=k.index))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await crypto.stub.Decrypt(
            _decrypt_request(list(old.ciphertexts)), metadata=crypto.metadata()
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _error_code(caught.value) == "retired_key_version"
    decrypted = await crypto.stub.Decrypt(
        _decrypt_request(list(rewrapped.ciphertexts)), metadata=crypto.metadata()
    )
    assert list(decrypted.plaintexts) == PII


async def test_blind_index_over_grpc(crypto) -> None:
    def item(value: str) -> pb.BlindIndexItem:
        return pb.BlindIndexItem(
            value=value,
            normalization=pb.NORMALIZATION_EMAIL,
            context=b"visitors/ws_1/visitor.email",
        )

    reply = await crypto.stub.BlindIndex(
        pb.BlindIndexRequest(items=[item(" Ada@Example.COM "), item("ada@example.com")]),
        metadata=crypto.metadata(),
    )
    first, second = (r.tokens[0].token for r in reply.results)
    assert first == second
    assert first.startswith("bi1.1.")


async def test_key_status_counts_encryptions(crypto) -> None:
    await crypto.stub.Encrypt(_encrypt_request(PII), metadata=crypto.metadata())
    await crypto.server.service.sync_usage()
    status = await crypto.stub.KeyStatus(pb.KeyStatusRequest(), metadata=crypto.metadata())
    assert [(k.version, k.primary, k.encryptions) for k in status.data_keys] == [(1, True, 3)]
    assert status.min_data_version == 1
    assert status.rotate_threshold == crypto.settings.usage_rotate_threshold
