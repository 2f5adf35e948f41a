"""Opaque session tokens: 256-bit CSPRNG values with a recognisable prefix, stored as SHA-256.

The prefix lets secret scanners find leaked tokens and lets us refuse a token of the wrong
kind (an access token presented as a refresh token) with its own error.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from enum import Enum

from palisade.auth.errors import InvalidToken, WrongTokenType

TOKEN_BYTES = 32
_BODY = re.compile(r"[A-Za-z0-9_-]{43}")


class TokenKind(Enum):
    ACCESS = "plsd_at_"
    REFRESH = "plsd_rt_"
    # Between a correct password (or magic link) and the second factor; single-use, 5 min.
    MFA = "plsd_mfa_"
    MAGIC_LINK = "plsd_ml_"
    # Single-use emailed links of the account lifecycle (links/): each purpose its own prefix,
    # so a token pasted into the wrong form is refused before any lookup.
    EMAIL_VERIFICATION = "plsd_ev_"
    PASSWORD_RESET = "plsd_pr_"  # noqa: S105 (a prefix, not a secret)
    NOT_ME = "plsd_nm_"
    INVITATION = "plsd_inv_"


def new_token(kind: TokenKind) -> str:
    body = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode()
    return kind.value + body


def token_hash(token: str) -> bytes:
    """What is stored and looked up: SHA-256 of the whole token string."""
    return hashlib.sha256(token.encode("ascii")).digest()


def check_token(token: str, expected: TokenKind) -> bytes:
    """Validates shape and kind; returns the token's hash for lookup."""
    for kind in TokenKind:
        if token.startswith(kind.value):
            if kind is not expected:
                raise WrongTokenType()
            if not _BODY.fullmatch(token[len(kind.value) :]):
                raise InvalidToken()
            return token_hash(token)
    raise InvalidToken()
