"""Canonical encoding of associated data, so every service binds ciphertext to its place alike.

Parts are length-prefixed, so ("ab", "c") and ("a", "bc") can never encode the same bytes.
"""

from __future__ import annotations

import functools
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


def owner_of(data: bytes) -> str | None:
    """The service that associated data (or a blind-index context) belongs to, or None.

    The first part of an associated_data() encoding ("visitors" in ("visitors", ws, id,
    "email")); for a path-like context that is not such an encoding, the text before its
    first "/" (b"auth/user.email" -> "auth"). A function of the bytes alone, so no two
    services can ever claim the same associated data.
    """
    if data.startswith(_AAD_VERSION):
        if len(data) < len(_AAD_VERSION) + 4:
            return None
        (length,) = struct.unpack_from(">I", data, len(_AAD_VERSION))
        start = len(_AAD_VERSION) + 4
        first = data[start : start + length]
        if len(first) != length:
            return None
    else:
        first, slash, _ = data.partition(b"/")
        if not slash:
            return None
    try:
        return first.decode("utf-8") or None
    except UnicodeDecodeError:
        return None


@functools.lru_cache(maxsize=64)
def _owned_prefixes(service: str) -> tuple[bytes, bytes]:
    raw = service.encode("utf-8")
    return _AAD_VERSION + struct.pack(">I", len(raw)) + raw, raw + b"/"


def owned_by(data: bytes, service: str) -> bool:
    """owner_of(data) == service, as two prefix comparisons instead of a parse and a decode:
    crypto asks this of every item of every batch (a third of a 1,000-field call's own work
    went to parsing owners)."""
    if not service or "/" in service:
        return owner_of(data) == service  # not a service name: the general rule decides
    encoded, path = _owned_prefixes(service)
    if data.startswith(_AAD_VERSION):
        return data.startswith(encoded)
    return data.startswith(path)
