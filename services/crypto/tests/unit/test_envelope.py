"""The ciphertext envelope: exact layout, randomness, and that any change fails closed."""

from __future__ import annotations

import struct

import grpc
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from palisade.common.aad import associated_data
from palisade.common.clock import ManualClock
from palisade.common.errors import PalisadeError
from palisade.crypto import envelope
from palisade.crypto.envelope import (
    IV_BYTES,
    MIN_ENVELOPE_BYTES,
    TAG_BYTES,
    key_version_of,
    open_envelope,
    seal,
    seal_many,
)
from palisade.crypto.errors import (
    MalformedCiphertext,
    TamperedCiphertext,
    UnknownKeyVersion,
    UnknownSubjectKey,
)
from palisade.crypto.keyring import KEY_BYTES, KeyVersion

HEADER = 5
PLAINTEXT = b"alice@example.com"


def _key(version: int, fill: int | None = None) -> KeyVersion:
    raw = bytes([fill]) * KEY_BYTES if fill is not None else bytes(range(KEY_BYTES))
    return KeyVersion(version, raw, ManualClock().now())


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _with_version(data: bytes, version: int) -> bytes:
    return data[:1] + struct.pack(">I", version) + data[HEADER:]


# -- layout ---------------------------------------------------------------------------------------


def test_constants_match_the_documented_format():
    assert envelope.FORMAT_V1 == 1
    assert IV_BYTES == 16
    assert TAG_BYTES == 16
    assert MIN_ENVELOPE_BYTES == 1 + 4 + 16 + 16
    assert KEY_BYTES == 32  # AES-256


def test_layout_is_version_keyversion_iv_then_gcm_ciphertext_and_tag(aad):
    key = _key(0x01020304)
    sealed = seal(key, PLAINTEXT, aad)

    assert len(sealed) == 1 + 4 + IV_BYTES + len(PLAINTEXT) + TAG_BYTES
    assert sealed[0] == 1
    assert sealed[1:5] == b"\x01\x02\x03\x04"  # big-endian
    assert key_version_of(sealed) == 0x01020304
    iv = sealed[HEADER : HEADER + IV_BYTES]
    body = sealed[HEADER + IV_BYTES :]
    # An independent AES-256-GCM decryption with the documented AAD (header + caller's AAD).
    assert AESGCM(key.key).decrypt(iv, body, sealed[:HEADER] + aad) == PLAINTEXT
    # The caller's AAD alone is not what was authenticated: the header is bound too.
    with pytest.raises(InvalidTag):
        AESGCM(key.key).decrypt(iv, body, aad)


def test_round_trip(aad):
    key = _key(1)
    for plaintext in (b"", b"x", PLAINTEXT, bytes(range(256)) * 8):
        assert open_envelope(key, seal(key, plaintext, aad), aad) == plaintext


def test_empty_plaintext_is_a_minimal_envelope(aad):
    key = _key(1)
    sealed = seal(key, b"", aad)
    assert len(sealed) == MIN_ENVELOPE_BYTES
    assert key_version_of(sealed) == 1
    assert open_envelope(key, sealed, aad) == b""


def test_same_plaintext_twice_gives_different_ciphertexts_and_ivs(aad):
    key = _key(1)
    first, second = seal(key, PLAINTEXT, aad), seal(key, PLAINTEXT, aad)
    assert first != second
    assert first[HEADER : HEADER + IV_BYTES] != second[HEADER : HEADER + IV_BYTES]
    assert first[HEADER + IV_BYTES :] != second[HEADER + IV_BYTES :]


def test_every_item_of_a_batch_gets_its_own_iv(aad):
    key = _key(1)
    sealed = seal_many(key, [(PLAINTEXT, aad)] * 200)
    ivs = {s[HEADER : HEADER + IV_BYTES] for s in sealed}
    assert len(ivs) == 200
    assert len(set(sealed)) == 200
    assert all(open_envelope(key, s, aad) == PLAINTEXT for s in sealed)


def test_seal_many_keeps_order_and_binds_each_item_to_its_own_aad():
    key = _key(3)
    items = [(f"value-{i}".encode(), associated_data("t", "ws", str(i), "f")) for i in range(5)]
    sealed = seal_many(key, items)
    assert [open_envelope(key, s, a) for s, (_, a) in zip(sealed, items, strict=True)] == [
        p for p, _ in items
    ]
    with pytest.raises(TamperedCiphertext):
        open_envelope(key, sealed[0], items[1][1])


def test_seal_many_of_nothing_is_nothing():
    assert seal_many(_key(1), []) == []


# -- failing closed, envelope level ---------------------------------------------------------------


def test_every_single_bit_flip_in_iv_body_or_tag_is_tampering(aad):
    key = _key(1)
    sealed = seal(key, b"abc", aad)
    for bit in range(HEADER * 8, len(sealed) * 8):
        with pytest.raises(TamperedCiphertext) as info:
            open_envelope(key, _flip(sealed, bit), aad)
        assert info.value.status == grpc.StatusCode.DATA_LOSS


def test_every_single_bit_flip_in_the_format_byte_is_malformed(aad):
    sealed = seal(_key(1), b"abc", aad)
    for bit in range(8):
        with pytest.raises(MalformedCiphertext) as info:
            key_version_of(_flip(sealed, bit))
        assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.code == "malformed_ciphertext"


def test_header_is_authenticated_even_if_the_same_key_is_used(aad):
    key = _key(1)
    sealed = seal(key, PLAINTEXT, aad)
    # Same key, header claims version 2: the GCM associated data no longer matches.
    with pytest.raises(TamperedCiphertext):
        open_envelope(key, _with_version(sealed, 2), aad)


def test_short_envelopes_are_malformed():
    for n in range(MIN_ENVELOPE_BYTES):
        with pytest.raises(MalformedCiphertext):
            key_version_of(b"\x01" * n)


def test_wrong_key_same_version_is_tampering(aad):
    sealed = seal(_key(1, fill=1), PLAINTEXT, aad)
    with pytest.raises(TamperedCiphertext):
        open_envelope(_key(1, fill=2), sealed, aad)


# -- failing closed, through the service ----------------------------------------------------------


async def test_service_round_trip_and_header(crypto, aad):
    (sealed,), version = await crypto.service.encrypt([(PLAINTEXT, aad)])
    assert version == crypto.keyring.data.primary == 1
    assert sealed[0] == 1
    assert sealed[1:5] == struct.pack(">I", 1)
    assert await crypto.service.decrypt([(sealed, aad)]) == [PLAINTEXT]


async def test_service_same_plaintext_twice_differs(crypto, aad):
    (a, b), _ = await crypto.service.encrypt([(PLAINTEXT, aad), (PLAINTEXT, aad)])
    (c,), _ = await crypto.service.encrypt([(PLAINTEXT, aad)])
    assert len({a, b, c}) == 3
    assert len({x[HEADER : HEADER + IV_BYTES] for x in (a, b, c)}) == 3


async def test_service_empty_plaintext(crypto, aad):
    (sealed,), _ = await crypto.service.encrypt([(b"", aad)])
    assert len(sealed) == MIN_ENVELOPE_BYTES
    assert await crypto.service.decrypt([(sealed, aad)]) == [b""]


async def test_service_every_single_bit_flip_fails_with_the_right_error(crypto, aad):
    crypto.rotate_data()
    crypto.rotate_data()  # versions 1, 2, 3: some header flips land on a real version
    existing = set(crypto.keyring.data.keys)
    (sealed,), version = await crypto.service.encrypt([(b"abcd", aad)])
    assert version == 3
    seen: set[type] = set()
    for bit in range(len(sealed) * 8):
        tampered = _flip(sealed, bit)
        if bit < 8:
            expected: type[PalisadeError] = MalformedCiphertext
        elif bit < HEADER * 8:
            expected = TamperedCiphertext
            if key_version_of(tampered) not in existing:
                expected = UnknownKeyVersion
        else:
            expected = TamperedCiphertext
        result = None
        with pytest.raises(PalisadeError) as info:
            result = await crypto.service.decrypt([(tampered, aad)])
        assert result is None
        assert type(info.value) is expected, f"bit {bit}"
        assert info.value.message.startswith("item 0: ")
        seen.add(expected)
    assert seen == {MalformedCiphertext, TamperedCiphertext, UnknownKeyVersion}


async def test_service_truncation_at_every_length_fails(crypto, aad):
    (sealed,), _ = await crypto.service.encrypt([(b"some value", aad)])
    for n in range(len(sealed)):
        expected = MalformedCiphertext if n < MIN_ENVELOPE_BYTES else TamperedCiphertext
        with pytest.raises(expected) as info:
            await crypto.service.decrypt([(sealed[:n], aad)])
        assert info.value.message.startswith("item 0: "), n


async def test_service_extension_fails(crypto, aad):
    (sealed,), _ = await crypto.service.encrypt([(b"some value", aad)])
    with pytest.raises(TamperedCiphertext):
        await crypto.service.decrypt([(sealed + b"\x00", aad)])


@pytest.mark.parametrize(
    "other",
    [
        ("operators", "ws_1", "v_1", "email"),  # another table
        ("visitors", "ws_2", "v_1", "email"),  # another workspace
        ("visitors", "ws_1", "v_2", "email"),  # another record
        ("visitors", "ws_1", "v_1", "phone"),  # another field
        ("visitors", "ws_1", "v_1"),  # a part dropped
        ("visitors", "ws_1", "v_1", "email", ""),  # a part added
        ("visitors", "ws_1v", "_1", "email"),  # same characters, other split
    ],
)
async def test_service_wrong_associated_data_is_tampering(crypto, aad, other):
    (sealed,), _ = await crypto.service.encrypt([(PLAINTEXT, aad)])
    with pytest.raises(TamperedCiphertext) as info:
        await crypto.service.decrypt([(sealed, associated_data(*other))])
    assert info.value.status == grpc.StatusCode.DATA_LOSS
    assert info.value.code == "ciphertext_tampered"


async def test_service_ciphertexts_swapped_between_records_fail(crypto):
    aad_a = associated_data("visitors", "ws_1", "v_1", "email")
    aad_b = associated_data("visitors", "ws_1", "v_2", "email")
    (a, b), _ = await crypto.service.encrypt([(b"a@example.com", aad_a), (b"b@example.com", aad_b)])
    assert await crypto.service.decrypt([(a, aad_a), (b, aad_b)]) == [
        b"a@example.com",
        b"b@example.com",
    ]
    with pytest.raises(TamperedCiphertext) as info:
        await crypto.service.decrypt([(b, aad_a), (a, aad_b)])
    assert info.value.message.startswith("item 0: ")


async def test_service_unknown_key_version_is_not_found(crypto, aad):
    (sealed,), _ = await crypto.service.encrypt([(PLAINTEXT, aad)])
    with pytest.raises(UnknownKeyVersion) as info:
        await crypto.service.decrypt([(_with_version(sealed, 99), aad)])
    assert info.value.status == grpc.StatusCode.NOT_FOUND
    assert info.value.code == "unknown_key_version"
    assert info.value.message == "item 0: key version 99 is unknown"


async def test_service_header_moved_to_another_existing_version_is_tampering(crypto, aad):
    (old,), _ = await crypto.service.encrypt([(PLAINTEXT, aad)])
    crypto.rotate_data()
    (new,), version = await crypto.service.encrypt([(PLAINTEXT, aad)])
    assert version == 2
    for sealed, other in ((old, 2), (new, 1)):
        with pytest.raises(TamperedCiphertext) as info:
            await crypto.service.decrypt([(_with_version(sealed, other), aad)])
        assert info.value.status == grpc.StatusCode.DATA_LOSS


async def test_service_unknown_format_version_is_malformed(crypto, aad):
    (sealed,), _ = await crypto.service.encrypt([(PLAINTEXT, aad)])
    for fmt in (0, 3, 255):
        with pytest.raises(MalformedCiphertext) as info:
            await crypto.service.decrypt([(bytes([fmt]) + sealed[1:], aad)])
        assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT


async def test_service_format_1_relabelled_as_a_subject_envelope_opens_nothing(crypto, aad):
    """Format 2 reads bytes 5-20 as a subject key id: a format 1 envelope so relabelled names
    a key id nobody has (its IV), and is refused before any key is tried."""
    (sealed,), _ = await crypto.service.encrypt([(PLAINTEXT, aad)])
    with pytest.raises(UnknownSubjectKey) as info:
        await crypto.service.decrypt([(bytes([2]) + sealed[1:], aad)])
    assert info.value.status == grpc.StatusCode.NOT_FOUND
    assert info.value.code == "unknown_subject_key"
