"""Auth's own stable secret: throttle keys and passkey decoys that survive index-key rotation.

Blind-index tokens change when the crypto service's index key rotates (and when email
normalization changes). Keys derived from them would reset every login and magic-link counter
at a rotation, and passkey decoys would change for emails without passkeys while real lists
stay the same, telling who has passkeys. So these derive from a key only auth holds, which
never rotates: `<data dir>/keys/auth-local.json` (created 0600 on first run in the embedded
default; a mounted Kubernetes Secret in production). It protects no data at rest: losing it
only resets counters and changes decoys once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import struct
import unicodedata
from pathlib import Path

from palisade.common.secret_files import check_secret_file, create_exclusive

KEY_BYTES = 32
_THROTTLE = b"palisade/auth/throttle-email"
_DECOY = b"palisade/auth/passkey-decoy"
_KNOWN_NETWORK = b"palisade/auth/known-network"


def fold_email(email: str) -> str:
    """The email as the EMAIL blind index compares it (NFKC, case folding, NFKC)."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", email).strip().casefold())


class LocalKeys:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the auth-local key must be 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "LocalKeys(<secret>)"

    def _derive(self, purpose: bytes, email: str) -> bytes:
        return self._mac(purpose, fold_email(email).encode())

    def email_throttle_key(self, email: str) -> str:
        """Names an email's throttle counters (Redis never sees the email); stable forever."""
        return (
            "e1:" + base64.urlsafe_b64encode(self._derive(_THROTTLE, email)).rstrip(b"=").decode()
        )

    def known_network_key(self, user_id: str, network: str) -> str:
        """Names a network a user signed in from (sessions/new_networks.py) without storing
        the address: HMAC of the user and the network, stable forever, so a rotation of the
        index key never makes every known network new again."""
        digest = self._mac(_KNOWN_NETWORK, user_id.encode(), network.encode())
        return "n1:" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def _mac(self, purpose: bytes, *parts: bytes) -> bytes:
        message = struct.pack(">I", len(purpose)) + purpose
        for part in parts:
            message += struct.pack(">I", len(part)) + part
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def decoy_seed(self, email: str) -> bytes:
        """Seeds the decoy credentials of an email without passkeys; stable forever."""
        return self._derive(_DECOY, email)


def _encode(key: bytes) -> bytes:
    return json.dumps({"auth_local_key": base64.b64encode(key).decode()}).encode()


def load_local_keys(path: Path, *, create_if_missing: bool) -> LocalKeys:
    """Reads the auth-local key; in the embedded default, creates it (0600) on first run."""
    if create_if_missing and not path.exists():
        create_exclusive(path, _encode(secrets.token_bytes(KEY_BYTES)))
    check_secret_file(path)
    document = json.loads(path.read_bytes())
    return LocalKeys(base64.b64decode(document["auth_local_key"], validate=True))
