"""The self-describing ciphertext envelopes.

Format 1, sealed under a keyring data key:

    byte 0      format version (1)
    bytes 1-4   key version, big-endian
    bytes 5-20  random 16-byte IV
    bytes 21-   AES-256-GCM ciphertext followed by its 16-byte tag

Format 2, sealed under a data subject's key (crypto-shredding, see subjects.py):

    byte 0      format version (2)
    bytes 1-4   key version, big-endian (the data key the subject's key is derived from)
    bytes 5-20  subject key id: the random id of the subject's secret in the crypto database
    bytes 21-36 random 16-byte IV
    bytes 37-   AES-256-GCM ciphertext followed by its 16-byte tag

The GCM associated data is the whole header (5 or 21 bytes) followed by the caller's associated
data, so the format, key version and subject key id are authenticated too: a ciphertext moved to
another record or field (different associated data) or relabelled as another subject's (a
different key id, hence a different key) fails to open. The subject key id names the subject
without showing who it is.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from palisade.crypto.errors import MalformedCiphertext, TamperedCiphertext
from palisade.crypto.keyring import KeyVersion

FORMAT_V1 = 1
FORMAT_SUBJECT = 2
_HEADER = struct.Struct(">BI")
IV_BYTES = 16
TAG_BYTES = 16
SUBJECT_KEY_ID_BYTES = 16
HEADER_BYTES = _HEADER.size
SUBJECT_HEADER_BYTES = _HEADER.size + SUBJECT_KEY_ID_BYTES
MIN_ENVELOPE_BYTES = HEADER_BYTES + IV_BYTES + TAG_BYTES
MIN_SUBJECT_ENVELOPE_BYTES = SUBJECT_HEADER_BYTES + IV_BYTES + TAG_BYTES
# The most an envelope adds to its plaintext (what batch size limits allow for).
MAX_ENVELOPE_OVERHEAD = MIN_SUBJECT_ENVELOPE_BYTES
_SUBJECT_PREFIX = bytes([FORMAT_SUBJECT])


class SealingKey(Protocol):
    """A keyring KeyVersion or a subject's derived key: what seals and opens envelopes."""

    @property
    def aead(self) -> AESGCM: ...


def header(key_version: int, subject_key_id: bytes | None = None) -> bytes:
    """The header of a format 1 envelope, or of a format 2 one when a subject key id is given."""
    if subject_key_id is None:
        return _HEADER.pack(FORMAT_V1, key_version)
    if len(subject_key_id) != SUBJECT_KEY_ID_BYTES:
        raise ValueError("a subject key id is 16 bytes")
    return _HEADER.pack(FORMAT_SUBJECT, key_version) + subject_key_id


def seal(key: KeyVersion, plaintext: bytes, associated_data: bytes) -> bytes:
    return seal_many(key, [(plaintext, associated_data)])[0]


def seal_many(key: KeyVersion, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """Format 1 envelopes under a keyring data key."""
    return seal_with(key, header(key.version), items)


def seal_with(key: SealingKey, head: bytes, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """Seals (plaintext, associated data) pairs behind one header (see header()); one CSPRNG
    read supplies every IV."""
    ivs = os.urandom(IV_BYTES * len(items))
    encrypt = key.aead.encrypt
    sealed = []
    for i, (plaintext, associated_data) in enumerate(items):
        iv = ivs[i * IV_BYTES : (i + 1) * IV_BYTES]
        sealed.append(head + iv + encrypt(iv, plaintext, head + associated_data))
    return sealed


def key_version_of(envelope: bytes) -> int:
    """The key version an envelope names; raises MalformedCiphertext if it is not one."""
    return parse(envelope)[0]


def parse(envelope: bytes) -> tuple[int, bytes | None]:
    """(key version, subject key id or None for format 1); MalformedCiphertext if the bytes
    are not an envelope of a known format."""
    if len(envelope) < MIN_ENVELOPE_BYTES:
        raise MalformedCiphertext("ciphertext is too short to be an envelope")
    fmt, version = _HEADER.unpack_from(envelope)
    if fmt == FORMAT_V1:
        return int(version), None
    if fmt == FORMAT_SUBJECT:
        if len(envelope) < MIN_SUBJECT_ENVELOPE_BYTES:
            raise MalformedCiphertext("ciphertext is too short to be an envelope")
        return int(version), envelope[HEADER_BYTES:SUBJECT_HEADER_BYTES]
    raise MalformedCiphertext("unknown ciphertext format version")


def subject_key_id_of(envelope: bytes) -> bytes | None:
    """The subject key id of a well-formed format 2 envelope; None for anything else (parse()
    decides later whether it is malformed). A byte comparison, so batches without subject
    envelopes cost one cheap pass."""
    if envelope.startswith(_SUBJECT_PREFIX) and len(envelope) >= MIN_SUBJECT_ENVELOPE_BYTES:
        return envelope[HEADER_BYTES:SUBJECT_HEADER_BYTES]
    return None


def open_envelope(key: SealingKey, envelope: bytes, associated_data: bytes) -> bytes:
    """Authenticates and decrypts; the key must be the one parse(envelope) names (the data key
    of its version, or for format 2 the subject's key derived from it)."""
    size = SUBJECT_HEADER_BYTES if envelope.startswith(_SUBJECT_PREFIX) else HEADER_BYTES
    head = envelope[:size]
    iv = envelope[size : size + IV_BYTES]
    body = envelope[size + IV_BYTES :]
    try:
        return key.aead.decrypt(iv, body, head + associated_data)
    except InvalidTag:
        raise TamperedCiphertext() from None
