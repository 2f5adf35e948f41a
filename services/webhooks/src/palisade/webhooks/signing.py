"""Standard Webhooks 1.0 signing (symmetric, `v1`): secrets, the signature header, and a verifier.

A secret is "whsec_" + standard base64 (padded) of 32 random bytes; the HMAC key is those bytes.
The signed content is "<msg_id>.<timestamp>.<body>" (the body's exact bytes, as sent) and the
header value is "v1,<base64 HMAC-SHA256>" per secret, space-separated: during a rotation's
overlap the old and the new secret both sign, so a receiver holding either one verifies.

The delivery worker only signs; verify() is what a receiver does, kept here for our own tests
and tools (the tests also check against the independent `standardwebhooks` package).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as random_source
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix every secret carries, not a secret)
SECRET_BYTES = 32
SIGNATURE_VERSION = "v1"
# What receivers are told to accept (Standard Webhooks libraries use 5 minutes each way).
DEFAULT_TOLERANCE_SECONDS = 300

# The id and the timestamp are joined with "." in the signed content: neither may contain one
# (the spec's warning), nor anything that could not travel in an HTTP header unchanged.
_MSG_ID = re.compile(r"[A-Za-z0-9_\-]{1,256}")
# 32 bytes in padded standard base64: 43 characters of the alphabet and one "=".
_SECRET_BODY = re.compile(r"[A-Za-z0-9+/]{43}=")
HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"


class InvalidSecret(ValueError):
    """Not a whsec_ secret of this service. The message never contains the text given."""


class InvalidMessage(ValueError):
    """A message id or timestamp that cannot be signed safely."""


def generate_secret() -> str:
    """A new signing secret: whsec_ + base64 of 32 bytes from the OS CSPRNG."""
    return SECRET_PREFIX + base64.b64encode(random_source.token_bytes(SECRET_BYTES)).decode()


def parse_secret(secret: str) -> bytes:
    """The HMAC key of a whsec_ secret. Strict: the prefix, canonical padded base64, exactly 32
    bytes (the only kind this service issues), so a truncated or mangled stored secret fails
    loudly here instead of signing with a different key."""
    if not secret.startswith(SECRET_PREFIX):
        raise InvalidSecret("a signing secret starts with whsec_")
    body = secret[len(SECRET_PREFIX) :]
    if _SECRET_BODY.fullmatch(body) is None:
        raise InvalidSecret("a signing secret is whsec_ and the base64 of 32 bytes")
    try:
        key = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("a signing secret is whsec_ and the base64 of 32 bytes") from None
    # The regex admits 43 characters whose last one carries bits beyond the 32 bytes (e.g.
    # "...B=" vs "...A="): only the canonical encoding is one secret, never two spellings.
    if len(key) != SECRET_BYTES or base64.b64encode(key).decode() != body:
        raise InvalidSecret("a signing secret is whsec_ and the base64 of 32 bytes")
    return key


def is_valid_secret(secret: str) -> bool:
    try:
        parse_secret(secret)
    except InvalidSecret:
        return False
    return True


def _signed_content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    if _MSG_ID.fullmatch(msg_id) is None:
        raise InvalidMessage("a message id is 1 to 256 characters of [A-Za-z0-9_-]")
    # bool is an int subclass: True would sign as "1" and surprise everyone.
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise InvalidMessage("a timestamp is whole non-negative Unix seconds")
    return b"%s.%d.%s" % (msg_id.encode("ascii"), timestamp, body)


def _signature(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).digest()


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header value: one "v1,<base64>" per secret, in the order given
    (the current secret first, by convention), space-separated; duplicates signed once."""
    if not secrets:
        raise InvalidSecret("at least one signing secret is needed")
    content = _signed_content(msg_id, timestamp, body)
    keys: list[bytes] = []
    for secret in secrets:
        key = parse_secret(secret)
        if key not in keys:
            keys.append(key)
    return " ".join(
        f"{SIGNATURE_VERSION},{base64.b64encode(_signature(key, content)).decode()}" for key in keys
    )


def signed_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (timestamp: the attempt's, not the
    event's; msg_id: the event's, the same on every retry)."""
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: sign(secrets, msg_id, timestamp, body),
    }


def verify(
    secrets: Sequence[str],
    *,
    msg_id: str,
    timestamp: str,
    body: bytes,
    signature_header: str,
    now: float,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver does: the timestamp header within tolerance of now (either way), and at
    least one v1 signature of the header equal to ours under one of the secrets. Signatures of
    other versions (v1a) are skipped; every comparison is constant-time (hmac.compare_digest)."""
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    sent_at = int(timestamp)
    if abs(now - sent_at) > tolerance_seconds:
        return False
    try:
        content = _signed_content(msg_id, sent_at, body)
    except InvalidMessage:
        return False
    expected = [_signature(parse_secret(secret), content) for secret in secrets]
    matched = False
    for item in signature_header.split(" "):
        version, comma, encoded = item.partition(",")
        if not comma or version != SIGNATURE_VERSION:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        for candidate in expected:
            # No early exit: the time taken does not depend on which secret matched.
            matched |= hmac.compare_digest(candidate, given)
    return matched
