"""The checkpoint signing keys, kept in a file outside the database (like crypto's keyring).

    {"format": 1, "current": "<key id>",
     "keys": [{"key_id": ..., "algorithm": "Ed25519", "public_key": "<base64 raw 32 bytes>",
               "private_key": "<base64 raw 32-byte seed>", "created_at": "<RFC 3339>"}, ...]}

Only the current key has a private half; rotation makes a new current key and keeps the
earlier ones' public halves, so every checkpoint ever signed still verifies and is published
(ListSigningKeys). A key id is the first 16 hex characters of SHA-256 over the public key, so it
names that key and no other. The file is created 0600 on the embedded default's first run
(create_missing_keys); in Kubernetes it is a mounted Secret. Nothing here is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from palisade.common.secret_files import (
    InsecureSecretPath,
    check_secret_file,
    create_exclusive,
    file_signature,
    locked,
    replace_atomically,
)

log = logging.getLogger("palisade.audit.signing_keys")

FORMAT = 1
ALGORITHM = "Ed25519"


class SigningKeysInvalid(Exception):
    """The key file is missing, unreadable, unsafe or malformed (the message names no key)."""


def key_id_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class VerifyingKey:
    key_id: str
    public_key: bytes  # raw 32 bytes
    created_at: datetime

    def verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class SigningKeys:
    current: str
    keys: dict[str, VerifyingKey]
    _private: bytes = field(repr=False)  # the current key's seed

    def sign(self, message: bytes) -> tuple[str, bytes]:
        """(key id, signature) under the current key."""
        return self.current, Ed25519PrivateKey.from_private_bytes(self._private).sign(message)

    def verify(self, key_id: str, signature: bytes, message: bytes) -> bool:
        key = self.keys.get(key_id)
        return key is not None and key.verify(signature, message)

    @classmethod
    def generate(cls, now: datetime) -> SigningKeys:
        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        public = _raw_public(private.public_key())
        key_id = key_id_of(public)
        return cls(key_id, {key_id: VerifyingKey(key_id, public, now)}, seed)

    def rotated(self, now: datetime) -> SigningKeys:
        """A new current key; the earlier keys stay, public halves only."""
        fresh = SigningKeys.generate(now)
        return SigningKeys(fresh.current, {**self.keys, **fresh.keys}, fresh._private)

    def to_json(self) -> bytes:
        entries: list[dict[str, Any]] = []
        for key in sorted(self.keys.values(), key=lambda k: (k.created_at, k.key_id)):
            entry: dict[str, Any] = {
                "key_id": key.key_id,
                "algorithm": ALGORITHM,
                "public_key": base64.b64encode(key.public_key).decode(),
                "created_at": key.created_at.astimezone(UTC).isoformat(),
            }
            if key.key_id == self.current:
                entry["private_key"] = base64.b64encode(self._private).decode()
            entries.append(entry)
        return json.dumps(
            {"format": FORMAT, "current": self.current, "keys": entries}, indent=2
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> SigningKeys:
        try:
            body = json.loads(raw)
            if body.get("format") != FORMAT:
                raise SigningKeysInvalid("the signing key file has an unknown format")
            keys: dict[str, VerifyingKey] = {}
            private: bytes | None = None
            for entry in body["keys"]:
                if entry["algorithm"] != ALGORITHM:
                    raise SigningKeysInvalid("the signing key file holds a non-Ed25519 key")
                public = base64.b64decode(entry["public_key"], validate=True)
                key_id = key_id_of(public)
                if len(public) != 32 or entry["key_id"] != key_id:
                    raise SigningKeysInvalid("a public key of the signing key file is malformed")
                created = datetime.fromisoformat(entry["created_at"])
                keys[key_id] = VerifyingKey(key_id, public, created.astimezone(UTC))
                if key_id == body["current"]:
                    seed = base64.b64decode(entry["private_key"], validate=True)
                    derived = Ed25519PrivateKey.from_private_bytes(seed).public_key()
                    if _raw_public(derived) != public:
                        raise SigningKeysInvalid("the current key's halves do not match")
                    private = seed
        except SigningKeysInvalid:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error, AttributeError):
            raise SigningKeysInvalid("the signing key file is malformed") from None
        if private is None:
            raise SigningKeysInvalid("the signing key file has no current private key")
        return cls(body["current"], keys, private)


def read_signing_keys(path: Path) -> SigningKeys:
    try:
        check_secret_file(path)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SigningKeysInvalid(f"no signing key file at {path}") from None
    except OSError as exc:
        raise SigningKeysInvalid(
            f"cannot read the signing key file at {path}: {exc.strerror}"
        ) from None
    except InsecureSecretPath as exc:
        raise SigningKeysInvalid(str(exc)) from None
    return SigningKeys.from_json(raw)


def create_signing_keys(path: Path, now: datetime) -> bool:
    """Creates the key file (mode 0600) unless it exists; returns whether it did."""
    return create_exclusive(path, SigningKeys.generate(now).to_json())


def rotate_signing_keys(path: Path, now: datetime) -> SigningKeys:
    """A new current key, under the file's lock (a running service reloads it)."""
    with locked(path):
        rotated = read_signing_keys(path).rotated(now)
        replace_atomically(path, rotated.to_json())
    return rotated


class SigningKeyHolder:
    """The keys in use, re-read when the file changes (a rotation, a Secret update)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature = file_signature(path)
        self._keys = read_signing_keys(path)

    @property
    def current(self) -> SigningKeys:
        signature = file_signature(self.path)
        if signature != self._signature:
            self._signature = signature
            try:
                keys = read_signing_keys(self.path)
                if set(self._keys.keys) - set(keys.keys):
                    raise SigningKeysInvalid("the new file dropped an earlier public key")
            except SigningKeysInvalid as exc:
                # Keep signing with the keys loaded; the operator sees why in the log.
                log.error("signing key file changed but cannot be used", extra={"reason": str(exc)})
            else:
                self._keys = keys
        return self._keys
