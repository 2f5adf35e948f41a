"""CryptoService: batches, rotation, retirement, rewrap, and its distinct, secret-free errors."""

from __future__ import annotations

import inspect
import struct
from dataclasses import replace

import grpc
import pytest

from palisade.common.aad import associated_data
from palisade.common.errors import PalisadeError
from palisade.crypto.envelope import MIN_ENVELOPE_BYTES, key_version_of
from palisade.crypto.errors import (
    BatchTooLarge,
    InvalidSubject,
    InvalidValue,
    KeyringInvalid,
    KeyUsageExhausted,
    MalformedCiphertext,
    MissingAssociatedData,
    RetiredKeyVersion,
    SubjectErased,
    TamperedCiphertext,
    UnknownKeyVersion,
    UnknownSubjectKey,
)
from palisade.crypto.keyring_file import update_keyring

SECRET = b"SECRET-plaintext-4242@example.com"


def _aad(record="v_1", field="email"):
    return associated_data("visitors", "ws_1", record, field)


def _header_version(envelope: bytes) -> int:
    return struct.unpack(">I", envelope[1:5])[0]


# -- encrypt / decrypt ----------------------------------------------------------------------------


async def test_batch_round_trip_in_order(crypto):
    items = [(f"value {i}".encode(), _aad(f"v_{i}")) for i in range(10)]
    ciphertexts, version = await crypto.service.encrypt(items)
    assert version == 1
    assert len(ciphertexts) == 10
    assert all(_header_version(c) == 1 for c in ciphertexts)
    plaintexts = await crypto.service.decrypt(
        [(c, aad) for c, (_, aad) in zip(ciphertexts, items, strict=True)]
    )
    assert plaintexts == [p for p, _ in items]
    assert crypto.outcome("encrypt", "ok") == 10
    assert crypto.outcome("decrypt", "ok") == 10
    assert crypto.usage.total(1) == 10


async def test_empty_batches(crypto):
    assert await crypto.service.encrypt([]) == ([], 1)
    assert await crypto.service.decrypt([]) == []
    assert await crypto.service.rewrap([]) == ([], [], 1)
    assert crypto.service.blind_index([], all_versions=True) == []
    assert crypto.usage.total(1) == 0


async def test_decrypt_batch_is_all_or_nothing(crypto):
    (good, other), _ = await crypto.service.encrypt([(b"one", _aad("v_1")), (b"two", _aad("v_2"))])
    result = None
    with pytest.raises(TamperedCiphertext) as info:
        result = await crypto.service.decrypt([(good, _aad("v_1")), (other, _aad("v_1"))])
    assert result is None
    assert info.value.message.startswith("item 1: ")
    assert crypto.outcome("decrypt", "ok") == 0
    assert crypto.outcome("decrypt", "ciphertext_tampered") == 1


# -- rotation -------------------------------------------------------------------------------------


async def test_rotation_old_ciphertexts_still_decrypt_and_new_ones_use_the_new_version(crypto):
    (old,), v1 = await crypto.service.encrypt([(SECRET, _aad())])
    keyring = crypto.rotate_data()
    assert keyring.data.primary == 2
    assert crypto.keyring.data.primary == 2

    (new,), v2 = await crypto.service.encrypt([(SECRET, _aad())])
    assert (v1, v2) == (1, 2)
    assert _header_version(old) == 1
    assert _header_version(new) == 2
    assert new[1:5] == b"\x00\x00\x00\x02"
    assert await crypto.service.decrypt([(old, _aad()), (new, _aad())]) == [SECRET, SECRET]
    assert crypto.usage.totals() == {1: 1, 2: 1}


async def test_rotation_by_another_process_is_seen_on_reload(crypto):
    (old,), _ = await crypto.service.encrypt([(SECRET, _aad())])
    update_keyring(crypto.path, lambda k: replace(k, data=k.data.rotated(crypto.clock.now())))
    assert crypto.holder.reload_if_changed() is True
    (new,), version = await crypto.service.encrypt([(SECRET, _aad())])
    assert version == 2
    assert _header_version(new) == 2
    assert await crypto.service.decrypt([(old, _aad())]) == [SECRET]


def test_version_rotated_model_used_directly(crypto):
    # VersionedKeys.rotated without the file: the model itself keeps old versions usable.
    data = crypto.keyring.data.rotated(crypto.clock.now())
    assert data.usable(1) is crypto.keyring.data.keys[1]
    assert data.usable(2) is data.primary_key


async def test_retired_versions_are_refused_with_a_clear_error(crypto):
    (old,), _ = await crypto.service.encrypt([(SECRET, _aad())])
    crypto.rotate_data()
    (new,), _ = await crypto.service.encrypt([(SECRET, _aad())])
    crypto.retire_data_below(2)
    assert crypto.keyring.data.min_version == 2

    with pytest.raises(RetiredKeyVersion) as info:
        await crypto.service.decrypt([(new, _aad()), (old, _aad())])
    assert info.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.code == "retired_key_version"
    assert info.value.message == "item 1: key version 1 is retired"
    assert crypto.outcome("decrypt", "retired_key_version") == 1
    # The current version is unaffected.
    assert await crypto.service.decrypt([(new, _aad())]) == [SECRET]


def test_cannot_retire_above_the_primary(crypto):
    before = crypto.path.read_bytes()
    with pytest.raises(KeyringInvalid) as info:
        crypto.retire_data_below(2)
    assert info.value.status == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.code == "keyring_invalid"
    assert crypto.path.read_bytes() == before
    assert crypto.keyring.data.min_version == 1


async def test_retiring_the_primary_itself_keeps_it_usable(crypto):
    crypto.rotate_data()
    crypto.retire_data_below(2)
    (c,), version = await crypto.service.encrypt([(SECRET, _aad())])
    assert version == 2
    assert await crypto.service.decrypt([(c, _aad())]) == [SECRET]


# -- rewrap ---------------------------------------------------------------------------------------


async def test_rewrap_moves_old_ciphertexts_forward_and_leaves_current_ones(crypto):
    (old,), _ = await crypto.service.encrypt([(b"old secret", _aad("v_1"))])
    crypto.rotate_data()
    (current,), _ = await crypto.service.encrypt([(b"new secret", _aad("v_2"))])
    used_before = crypto.usage.total(2)

    out, rewrapped, version = await crypto.service.rewrap(
        [(old, _aad("v_1")), (current, _aad("v_2"))]
    )
    assert version == 2
    assert rewrapped == [True, False]
    moved, unchanged = out
    assert unchanged == current  # byte for byte
    assert moved != old
    assert _header_version(moved) == 2
    assert key_version_of(moved) == 2
    assert await crypto.service.decrypt([(moved, _aad("v_1"))]) == [b"old secret"]
    # Still bound to its record.
    with pytest.raises(TamperedCiphertext):
        await crypto.service.decrypt([(moved, _aad("v_2"))])
    assert crypto.usage.total(2) == used_before + 1  # only the moved one is an encryption
    assert crypto.outcome("rewrap", "ok") == 2


async def test_rewrap_of_current_ciphertexts_changes_nothing(crypto):
    (a, b), _ = await crypto.service.encrypt([(b"a", _aad("v_1")), (b"b", _aad("v_2"))])
    out, rewrapped, version = await crypto.service.rewrap([(a, _aad("v_1")), (b, _aad("v_2"))])
    assert (out, rewrapped, version) == ([a, b], [False, False], 1)
    assert crypto.usage.total(1) == 2


async def test_rewrap_then_retire_old_version(crypto):
    (old,), _ = await crypto.service.encrypt([(SECRET, _aad())])
    crypto.rotate_data()
    (moved,), _, _ = await crypto.service.rewrap([(old, _aad())])
    crypto.retire_data_below(2)
    assert await crypto.service.decrypt([(moved, _aad())]) == [SECRET]
    with pytest.raises(RetiredKeyVersion):
        await crypto.service.decrypt([(old, _aad())])


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda c: c, TamperedCiphertext),  # wrong AAD on the bad item
        (lambda c: c[:10], MalformedCiphertext),
        (lambda c: c[:1] + b"\x00\x00\x00\x63" + c[5:], UnknownKeyVersion),
    ],
)
async def test_rewrap_with_a_bad_item_fails_and_counts_nothing(crypto, mangle, error):
    (old, other), _ = await crypto.service.encrypt([(b"x", _aad("v_1")), (b"y", _aad("v_2"))])
    crypto.rotate_data()
    totals_before = crypto.usage.totals()
    result = None
    with pytest.raises(error) as info:
        result = await crypto.service.rewrap([(old, _aad("v_1")), (mangle(other), _aad("v_9"))])
    assert result is None
    assert info.value.message.startswith("item 1: ")
    assert crypto.usage.totals() == totals_before
    assert crypto.usage.total(2) == 0
    assert crypto.outcome("rewrap", "ok") == 0
    assert crypto.outcome("rewrap", error.code) == 1


async def test_rewrap_past_the_hard_limit_is_refused_whole(make_crypto):
    crypto = make_crypto(warn=1, rotate=1, hard=2)
    (a, b), _ = await crypto.service.encrypt([(b"a", _aad("v_1")), (b"b", _aad("v_2"))])
    crypto.rotate_data()
    await crypto.service.encrypt([(b"c", _aad("v_3"))])
    with pytest.raises(KeyUsageExhausted):
        await crypto.service.rewrap([(a, _aad("v_1")), (b, _aad("v_2"))])
    assert crypto.usage.total(2) == 1
    assert (await crypto.service.rewrap([(a, _aad("v_1"))]))[1] == [True]
    assert crypto.usage.total(2) == 2


# -- limits ---------------------------------------------------------------------------------------


async def test_batch_item_limit_is_inclusive(make_crypto):
    crypto = make_crypto(max_items=4)
    ciphertexts, _ = await crypto.service.encrypt([(b"x", _aad())] * 4)
    assert len(ciphertexts) == 4
    for op, items in (
        ("encrypt", [(b"x", _aad())] * 5),
        ("decrypt", [(ciphertexts[0], _aad())] * 5),
        ("rewrap", [(ciphertexts[0], _aad())] * 5),
    ):
        with pytest.raises(BatchTooLarge) as info:
            await _call(crypto.service, op, items)
        assert info.value.status == grpc.StatusCode.OUT_OF_RANGE
        assert info.value.code == "batch_too_large"
        assert info.value.message == "batch of 5 items exceeds the limit of 4"
        assert crypto.outcome(op, "batch_too_large") == 1
    assert crypto.usage.total(1) == 4


async def test_item_byte_limit(make_crypto):
    crypto = make_crypto(max_item_bytes=200)
    aad = _aad()
    fits = b"p" * (200 - len(aad))
    (c,), _ = await crypto.service.encrypt([(fits, aad)])
    assert len(c) == len(fits) + MIN_ENVELOPE_BYTES
    with pytest.raises(BatchTooLarge) as info:
        await crypto.service.encrypt([(b"ok", aad), (b"ok", aad), (fits + b"p", aad)])
    assert info.value.status == grpc.StatusCode.OUT_OF_RANGE
    assert info.value.code == "batch_too_large"
    assert info.value.message == "item 2: item exceeds 200 bytes"
    assert crypto.usage.total(1) == 1


async def test_an_item_encrypted_at_the_size_limit_can_be_decrypted_and_rewrapped(make_crypto):
    # Whatever Encrypt accepts, Decrypt and Rewrap must accept back: the envelope adds
    # MIN_ENVELOPE_BYTES (37) to the plaintext, so the limit cannot be applied unchanged.
    crypto = make_crypto(max_item_bytes=200)
    aad = _aad()
    plaintext = b"p" * (200 - len(aad))
    (c,), _ = await crypto.service.encrypt([(plaintext, aad)])
    assert await crypto.service.decrypt([(c, aad)]) == [plaintext]
    crypto.rotate_data()
    (moved,), rewrapped, _ = await crypto.service.rewrap([(c, aad)])
    assert rewrapped == [True]
    assert await crypto.service.decrypt([(moved, aad)]) == [plaintext]


# -- distinct errors, never leaking ---------------------------------------------------------------


def test_error_classes_are_distinct():
    expected = {
        UnknownKeyVersion: (grpc.StatusCode.NOT_FOUND, "unknown_key_version"),
        RetiredKeyVersion: (grpc.StatusCode.FAILED_PRECONDITION, "retired_key_version"),
        TamperedCiphertext: (grpc.StatusCode.DATA_LOSS, "ciphertext_tampered"),
        MalformedCiphertext: (grpc.StatusCode.INVALID_ARGUMENT, "malformed_ciphertext"),
        MissingAssociatedData: (grpc.StatusCode.INVALID_ARGUMENT, "missing_associated_data"),
        BatchTooLarge: (grpc.StatusCode.OUT_OF_RANGE, "batch_too_large"),
        InvalidValue: (grpc.StatusCode.INVALID_ARGUMENT, "invalid_value"),
        KeyUsageExhausted: (grpc.StatusCode.RESOURCE_EXHAUSTED, "key_usage_exhausted"),
        KeyringInvalid: (grpc.StatusCode.FAILED_PRECONDITION, "keyring_invalid"),
        SubjectErased: (grpc.StatusCode.FAILED_PRECONDITION, "subject_erased"),
        InvalidSubject: (grpc.StatusCode.INVALID_ARGUMENT, "invalid_subject"),
        UnknownSubjectKey: (grpc.StatusCode.NOT_FOUND, "unknown_subject_key"),
    }
    for cls, (status, code) in expected.items():
        assert issubclass(cls, PalisadeError)
        assert (cls.status, cls.code) == (status, code), cls.__name__
    assert len({cls.code for cls in expected}) == len(expected)
    assert len({cls.default_message for cls in expected}) == len(expected)


async def _call(service, operation, items):
    """Runs a batch operation (all are coroutines now; decrypt may read subject rows)."""
    result = getattr(service, operation)(items)
    return await result if inspect.isawaitable(result) else result


async def _scenarios(crypto):
    """(operation, items, expected error), the failing item always at index 2 of 3."""
    good = [(SECRET, _aad("v_0")), (SECRET, _aad("v_1"))]
    ciphertexts, _ = await crypto.service.encrypt([*good, (SECRET, _aad("v_2"))])
    ok = [(c, a) for c, (_, a) in zip(ciphertexts[:2], good, strict=True)]
    bad = ciphertexts[2]  # under version 1
    crypto.rotate_data()
    current, _ = await crypto.service.encrypt(good)  # under version 2
    ok_current = [(c, a) for c, (_, a) in zip(current, good, strict=True)]
    unknown = bad[:1] + b"\x00\x00\x00\x63" + bad[5:]
    return [
        ("decrypt", [*ok, (unknown, _aad("v_2"))], UnknownKeyVersion),
        ("decrypt", [*ok, (bad, _aad("v_3"))], TamperedCiphertext),
        ("decrypt", [*ok, (b"\x09" + bad[1:], _aad("v_2"))], MalformedCiphertext),
        ("decrypt", [*ok, (bad[:20], _aad("v_2"))], MalformedCiphertext),
        ("decrypt", [*ok, (bad, b"")], MissingAssociatedData),
        ("decrypt", [*ok, (bad + b"\x00" * 5000, _aad("v_2"))], BatchTooLarge),
        ("rewrap", [*ok, (bad, _aad("v_3"))], TamperedCiphertext),
        ("encrypt", [*good, (SECRET, b"")], MissingAssociatedData),
        ("encrypt", [*good, (SECRET * 200, _aad("v_2"))], BatchTooLarge),
        ("retire", [*ok_current, (bad, _aad("v_2"))], RetiredKeyVersion),
    ]


async def test_errors_name_the_item_and_never_show_plaintext_or_keys(crypto, assert_no_keys):
    for operation, items, error in await _scenarios(crypto):
        if operation == "retire":
            crypto.retire_data_below(2)
            operation = "decrypt"
        result = None
        with pytest.raises(PalisadeError) as info:
            result = await _call(crypto.service, operation, items)
        exc = info.value
        assert result is None
        assert type(exc) is error, (operation, error)
        assert exc.message.startswith("item 2: "), exc.message
        assert exc.message == str(exc)
        assert exc.status == error.status
        assert exc.code == error.code
        for text in (str(exc), repr(exc), exc.message):
            assert SECRET.decode() not in text
            assert "SECRET" not in text
            assert_no_keys(text, crypto.keyring)
        assert crypto.outcome(operation, exc.code) >= 1


async def test_key_usage_exhausted_leaks_nothing(make_crypto, assert_no_keys):
    crypto = make_crypto(warn=1, rotate=1, hard=2)
    await crypto.service.encrypt([(SECRET, _aad())] * 2)
    with pytest.raises(KeyUsageExhausted) as info:
        await crypto.service.encrypt([(SECRET, _aad())])
    assert info.value.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "SECRET" not in repr(info.value)
    assert_no_keys(repr(info.value), crypto.keyring)


# -- status ---------------------------------------------------------------------------------------


async def test_status_reports_versions_usage_and_thresholds(make_crypto):
    crypto = make_crypto(warn=10, rotate=20, hard=30)
    await crypto.service.encrypt([(b"x", _aad())] * 3)
    crypto.rotate_data()
    await crypto.service.encrypt([(b"x", _aad())] * 2)
    crypto.retire_data_below(2)
    crypto.rotate_index()
    status = crypto.service.status()
    assert [(k.version, k.primary, k.retired, k.encryptions) for k in status.data_keys] == [
        (1, False, True, 3),
        (2, True, False, 2),
    ]
    assert [(k.version, k.primary, k.retired) for k in status.index_keys] == [
        (1, False, False),
        (2, True, False),
    ]
    assert status.min_data_version == 2
    assert status.min_index_version == 1
    assert (status.warn_threshold, status.rotate_threshold) == (10, 20)
    assert status.data_keys[1].created_at == crypto.keyring.data.keys[2].created_at
