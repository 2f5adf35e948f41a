"""Encrypt with blind-index items (one round trip per indexed write), and what an erased
subject's envelope answers with wrong associated data. Real gRPC, SQLite and Postgres."""

from __future__ import annotations

import grpc
import pytest

from palisade.common.aad import associated_data
from palisade.common.errors import ERROR_CODE_METADATA_KEY
from palisade_api.crypto.v1 import crypto_pb2 as pb

from .conftest import CryptoHarness, crypto_settings, running_crypto

VISITOR = "visitor:vis_0123456789abcdef0123456789abcdef"
CONTEXT = associated_data("visitors", "ws_1", "email")


def _aad(record: str, field: str = "email") -> bytes:
    return associated_data("visitors", "ws_1", record, field)


def _code(error: grpc.aio.AioRpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(ERROR_CODE_METADATA_KEY)


@pytest.fixture
async def crypto(tmp_path, database_url):
    async with running_crypto(crypto_settings(tmp_path, database_url)) as harness:
        yield harness


def _index_item(value: str, context: bytes = CONTEXT) -> pb.BlindIndexItem:
    return pb.BlindIndexItem(value=value, normalization=pb.NORMALIZATION_EXACT, context=context)


async def _encrypt(
    crypto: CryptoHarness, index_items: list[pb.BlindIndexItem], service: str = "visitors"
) -> pb.EncryptResponse:
    return await crypto.stub.Encrypt(
        pb.EncryptRequest(
            items=[
                pb.EncryptItem(
                    plaintext=b"ada@example.com", associated_data=_aad("v_1"), subject=VISITOR
                )
            ],
            index_items=index_items,
        ),
        metadata=crypto.metadata(service),
    )


async def _refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_index_items_answer_the_tokens_blind_index_would(crypto) -> None:
    reply = await _encrypt(crypto, [_index_item("ada@example.com"), _index_item("+4915112345")])
    assert len(reply.ciphertexts) == 1
    assert [len(r.tokens) for r in reply.index_results] == [1, 1]
    alone = await crypto.stub.BlindIndex(
        pb.BlindIndexRequest(items=[_index_item("ada@example.com"), _index_item("+4915112345")]),
        metadata=crypto.metadata(),
    )
    assert list(reply.index_results) == list(alone.results)
    assert reply.index_results[0].tokens[0].key_version == 1
    # Without index items the answer has none (the old shape of the call).
    plain = await _encrypt(crypto, [])
    assert list(plain.index_results) == []


async def test_a_bad_index_item_fails_the_call_before_anything_is_encrypted(crypto) -> None:
    before = crypto.server.service.status().data_keys[0].encryptions
    missing = await _refused(_encrypt(crypto, [_index_item("x", context=b"")]))
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    unnormalized = pb.BlindIndexItem(value="x", context=CONTEXT)
    error = await _refused(_encrypt(crypto, [unnormalized]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Another service's index context, even with the caller's own envelopes.
    foreign = await _refused(_encrypt(crypto, [_index_item("x", associated_data("auth", "e"))]))
    assert foreign.code() == grpc.StatusCode.PERMISSION_DENIED
    assert crypto.server.service.status().data_keys[0].encryptions == before


async def test_an_erased_subjects_envelope_answers_erased_whatever_its_associated_data(
    crypto,
) -> None:
    """Not a wrong-AD failure, and it cannot be: the AES-GCM tag is the only binding of the
    associated data, and its key was derived from the shredded secret (see service.py)."""
    [envelope] = (await _encrypt(crypto, [])).ciphertexts
    live_wrong = await _refused(
        crypto.stub.Decrypt(
            pb.DecryptRequest(
                items=[pb.DecryptItem(ciphertext=envelope, associated_data=_aad("v_2"))]
            ),
            metadata=crypto.metadata(),
        )
    )
    assert _code(live_wrong) == "ciphertext_tampered"  # alive: wrong AD is caught
    await crypto.stub.ShredSubject(
        pb.ShredSubjectRequest(subject=VISITOR), metadata=crypto.metadata()
    )
    answers = []
    for aad in (_aad("v_1"), _aad("v_2"), _aad("v_1", "phone")):
        error = await _refused(
            crypto.stub.Decrypt(
                pb.DecryptRequest(items=[pb.DecryptItem(ciphertext=envelope, associated_data=aad)]),
                metadata=crypto.metadata(),
            )
        )
        answers.append((error.code(), _code(error)))
    assert answers == [(grpc.StatusCode.FAILED_PRECONDITION, "subject_erased")] * 3
    # The limit documented in service.py: a service holding a copy, asking under its own
    # associated data, learns the same (and only that). Were this ever closed (an envelope
    # format with an AD commitment that outlives the shred), this would be ciphertext_tampered.
    copied = await _refused(
        crypto.stub.Decrypt(
            pb.DecryptRequest(
                items=[
                    pb.DecryptItem(
                        ciphertext=envelope, associated_data=associated_data("auth", "x")
                    )
                ]
            ),
            metadata=crypto.metadata("auth"),
        )
    )
    assert _code(copied) == "subject_erased"
