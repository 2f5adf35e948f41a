"""Canonical encoding of associated data, so every service binds ciphertext to its place alike.

Parts are length-prefixed, so ("ab", "c") and ("a", "bc") can never encode the same bytes.
"""

from __future__ import annotations

import struct

_AAD_VERSION = b"pa1"


def associated_data(*parts: str | bytes) -> bytes:
    """Encodes e.g. ("visitors", workspace_id, visitor_id, "email") as unambiguous bytes."""
    if not parts:
        raise ValueError("associated data needs at least one part")
    out = bytearray(_AAD_VERSION)
    for part in parts:
        raw = part.encode("utf-8") if isinstance(part, str) else bytes(part)
        out += struct.pack(">I", len(raw))
        out += raw
    return bytes(out)
