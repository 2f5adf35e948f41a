"""Blind index tokens: keyed HMAC-SHA256 over a normalized value within a context.

    token = "bi1.<key version>." + base64url(HMAC(index_key, "palisade-bi1" | ctx | value))

with ctx and value length-prefixed. The context (e.g. workspace id and field name) separates
domains, so equal emails in two workspaces get unrelated tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

from palisade.crypto.keyring import KeyVersion

TOKEN_PREFIX = "bi1"  # noqa: S105 - a format tag, not a secret
_DOMAIN = b"palisade-bi1"


def index_token(key: KeyVersion, normalized_value: str, context: bytes) -> str:
    value = normalized_value.encode("utf-8")
    message = (
        _DOMAIN + struct.pack(">I", len(context)) + context + struct.pack(">I", len(value)) + value
    )
    digest = hmac.new(key.key, message, hashlib.sha256).digest()
    encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return f"{TOKEN_PREFIX}.{key.version}.{encoded}"
