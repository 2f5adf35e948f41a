"""The self-describing ciphertext envelope.

    byte 0      format version (1)
    bytes 1-4   key version, big-endian
    bytes 5-20  random 16-byte IV
    bytes 21-   AES-256-GCM ciphertext followed by its 16-byte tag

The GCM associated data is the 5-byte header followed by the caller's associated data, so the
format and key version are authenticated too, and a ciphertext moved to another record or
field (different associated data) fails to open.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag

from palisade.crypto.errors import MalformedCiphertext, TamperedCiphertext
from palisade.crypto.keyring import KeyVersion

FORMAT_V1 = 1
_HEADER = struct.Struct(">BI")
IV_BYTES = 16
TAG_BYTES = 16
MIN_ENVELOPE_BYTES = _HEADER.size + IV_BYTES + TAG_BYTES


def seal(key: KeyVersion, plaintext: bytes, associated_data: bytes) -> bytes:
    return seal_many(key, [(plaintext, associated_data)])[0]


def seal_many(key: KeyVersion, items: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """Seals (plaintext, associated data) pairs; one CSPRNG read supplies every IV."""
    header = _HEADER.pack(FORMAT_V1, key.version)
    ivs = os.urandom(IV_BYTES * len(items))
    encrypt = key.aead.encrypt
    sealed = []
    for i, (plaintext, associated_data) in enumerate(items):
        iv = ivs[i * IV_BYTES : (i + 1) * IV_BYTES]
        sealed.append(header + iv + encrypt(iv, plaintext, header + associated_data))
    return sealed


def key_version_of(envelope: bytes) -> int:
    """The key version an envelope names; raises MalformedCiphertext if it is not one."""
    if len(envelope) < MIN_ENVELOPE_BYTES:
        raise MalformedCiphertext("ciphertext is too short to be an envelope")
    fmt, version = _HEADER.unpack_from(envelope)
    if fmt != FORMAT_V1:
        raise MalformedCiphertext("unknown ciphertext format version")
    return int(version)


def open_envelope(key: KeyVersion, envelope: bytes, associated_data: bytes) -> bytes:
    """Authenticates and decrypts; the key must be the one key_version_of(envelope) names."""
    header = envelope[: _HEADER.size]
    iv = envelope[_HEADER.size : _HEADER.size + IV_BYTES]
    body = envelope[_HEADER.size + IV_BYTES :]
    try:
        return key.aead.decrypt(iv, body, header + associated_data)
    except InvalidTag:
        raise TamperedCiphertext() from None
