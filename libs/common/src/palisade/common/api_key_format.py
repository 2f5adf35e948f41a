"""The API key format, shared by the service that mints keys and the gateway that checks them.

    <pk|sk>_<live|test>_<32 base62 characters><6 base62 characters>

The 32 characters are random (32 x log2(62) = 190 bits); the last 6 are the CRC32 of everything
before them, in base62, left-padded with "0" (GitHub's token layout). The checksum is not a
secret and proves nothing about a key's validity: it lets the gateway refuse a mistyped,
truncated or made-up key without a lookup (so a forged key never reaches the key service or
spends anyone's rate limit), and lets secret scanners tell real keys from look-alikes offline.

A scanner can match keys with SCANNER_PATTERN and then check the checksum with is_well_formed.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from dataclasses import dataclass

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LENGTH = 32
CHECKSUM_LENGTH = 6
KEY_TYPES = {"pk": "publishable", "sk": "secret"}
KEY_MODES = ("live", "test")
_PREFIX_LENGTH = len("sk_live_")
KEY_LENGTH = _PREFIX_LENGTH + RANDOM_LENGTH + CHECKSUM_LENGTH
# For scanners: the whole token (word boundaries on both sides), checksum not verified.
SCANNER_PATTERN = r"\b(?:pk|sk)_(?:live|test)_[0-9A-Za-z]{38}\b"
_FULL = re.compile(r"(pk|sk)_(live|test)_[0-9A-Za-z]{38}")


class MalformedKey(ValueError):
    """Not a Palisade API key: wrong shape or a checksum that does not match."""


@dataclass(frozen=True)
class KeyShape:
    type: str  # "publishable" | "secret"
    mode: str  # "live" | "test"


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(body: str) -> str:
    """The 6-character base62 CRC32 of body (the prefix and the random part)."""
    return _base62(zlib.crc32(body.encode("ascii")), CHECKSUM_LENGTH)


def prefix_for(key_type: str, mode: str) -> str:
    short = {v: k for k, v in KEY_TYPES.items()}.get(key_type)
    if short is None or mode not in KEY_MODES:
        raise ValueError(f"no key prefix for type {key_type!r} and mode {mode!r}")
    return f"{short}_{mode}_"


def generate(key_type: str, mode: str) -> str:
    """A new key of that type ("publishable"/"secret") and mode ("live"/"test")."""
    body = prefix_for(key_type, mode) + "".join(
        secrets.choice(ALPHABET) for _ in range(RANDOM_LENGTH)
    )
    return body + checksum(body)


def shape_of(key: str) -> KeyShape:
    """The type and mode of a well-formed key; MalformedKey otherwise (no lookup needed)."""
    found = _FULL.fullmatch(key) if len(key) == KEY_LENGTH and key.isascii() else None
    if found is None:
        raise MalformedKey("not an API key")
    body, sent = key[:-CHECKSUM_LENGTH], key[-CHECKSUM_LENGTH:]
    # Not compare_digest: the checksum is public (computed from the key itself).
    if checksum(body) != sent:
        raise MalformedKey("API key checksum does not match")
    return KeyShape(KEY_TYPES[found.group(1)], found.group(2))


def is_well_formed(key: str) -> bool:
    try:
        shape_of(key)
    except MalformedKey:
        return False
    return True


def lookup_hash(key: str) -> bytes:
    """SHA-256 of the key: what is stored and looked up (the key is high-entropy, so a slow
    hash would add nothing but latency on every request)."""
    return hashlib.sha256(key.encode("ascii")).digest()


def display_prefix(key: str) -> str:
    """What lists show of a key's start: the type prefix and 4 characters."""
    return key[: _PREFIX_LENGTH + 4]


def last4(key: str) -> str:
    return key[-4:]
