"""The keyring model: versioned AES-256 data keys and HMAC index keys. Pure data, no I/O.

Rotation adds a version and makes it primary; old versions keep decrypting until an operator
retires them (sets a minimum version). Nothing here ever appears in a repr or a log line.
"""

from __future__ import annotations

import base64
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from palisade.crypto.errors import KeyringInvalid, RetiredKeyVersion, UnknownKeyVersion

KEY_BYTES = 32
KEYRING_FORMAT = 1


@dataclass(frozen=True)
class KeyVersion:
    """One version of a key. The raw key and its cipher object never show in repr."""

    version: int
    key: bytes = field(repr=False)
    created_at: datetime
    aead: AESGCM = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_BYTES:
            raise KeyringInvalid(f"key version {self.version} is not {KEY_BYTES} bytes")
        object.__setattr__(self, "aead", AESGCM(self.key))


@dataclass(frozen=True)
class VersionedKeys:
    """All versions of one kind of key, which one is primary, and below which none is usable."""

    primary: int
    min_version: int
    keys: Mapping[int, KeyVersion] = field(repr=False)

    def __post_init__(self) -> None:
        if self.primary not in self.keys:
            raise KeyringInvalid("the primary key version is missing")
        if not 1 <= self.min_version <= self.primary:
            raise KeyringInvalid("the minimum key version must be between 1 and the primary")

    @property
    def primary_key(self) -> KeyVersion:
        return self.keys[self.primary]

    def usable(self, version: int) -> KeyVersion:
        """The key of version, or why it cannot be used."""
        key = self.keys.get(version)
        if key is None:
            raise UnknownKeyVersion(f"key version {version} is unknown")
        if version < self.min_version:
            raise RetiredKeyVersion(f"key version {version} is retired")
        return key

    def usable_versions(self) -> list[int]:
        """Usable versions, primary first, then newest to oldest."""
        rest = sorted(
            (v for v in self.keys if v >= self.min_version and v != self.primary), reverse=True
        )
        return [self.primary, *rest]

    def rotated(self, now: datetime) -> VersionedKeys:
        """A copy with a new random version, made primary."""
        version = max(self.keys) + 1
        new_key = KeyVersion(version, secrets.token_bytes(KEY_BYTES), now)
        return replace(self, primary=version, keys={**self.keys, version: new_key})

    def retired_below(self, version: int) -> VersionedKeys:
        if version > self.primary:
            raise KeyringInvalid("cannot retire the primary key version")
        return replace(self, min_version=max(self.min_version, version))

    def check_successor(self, new: VersionedKeys, kind: str) -> None:
        """Refuses a replacement that would silently lose data or move backwards."""
        for version, key in self.keys.items():
            replacement = new.keys.get(version)
            if replacement is None:
                if version >= self.min_version:
                    raise KeyringInvalid(f"{kind} key version {version} is in use but missing")
            elif not hmac.compare_digest(replacement.key, key.key):
                raise KeyringInvalid(f"{kind} key version {version} has different key bytes")
        if new.primary < self.primary:
            raise KeyringInvalid(f"the primary {kind} key version cannot go backwards")

    @classmethod
    def generate(cls, now: datetime) -> VersionedKeys:
        return cls(1, 1, {1: KeyVersion(1, secrets.token_bytes(KEY_BYTES), now)})


@dataclass(frozen=True)
class Keyring:
    data: VersionedKeys
    index: VersionedKeys

    @classmethod
    def generate(cls, now: datetime) -> Keyring:
        return cls(data=VersionedKeys.generate(now), index=VersionedKeys.generate(now))

    def check_successor(self, new: Keyring) -> None:
        """A reloaded keyring must keep every usable key as it was (e.g. not a keyring made by
        `keys init` elsewhere): data written meanwhile would be unreadable afterwards."""
        self.data.check_successor(new.data, "data")
        self.index.check_successor(new.index, "index")

    def to_json(self) -> bytes:
        return json.dumps(
            {"format": KEYRING_FORMAT, "data": _dump(self.data), "index": _dump(self.index)},
            indent=2,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Keyring:
        try:
            doc = json.loads(raw)
            if doc.get("format") != KEYRING_FORMAT:
                raise KeyringInvalid("unsupported keyring format")
            return cls(data=_load(doc["data"]), index=_load(doc["index"]))
        except KeyringInvalid:
            raise
        except Exception:  # any defect at all (incl. RecursionError on absurd nesting)
            # The message never quotes the file, and the cause is dropped: it holds keys.
            raise KeyringInvalid("the keyring file is not valid keyring JSON") from None


def _dump(keys: VersionedKeys) -> dict[str, Any]:
    return {
        "primary": keys.primary,
        "min_version": keys.min_version,
        "keys": {
            str(v): {
                "key": base64.b64encode(k.key).decode("ascii"),
                "created_at": k.created_at.isoformat(),
            }
            for v, k in sorted(keys.keys.items())
        },
    }


def _load(doc: dict[str, Any]) -> VersionedKeys:
    keys = {
        int(v): KeyVersion(
            int(v),
            base64.b64decode(entry["key"], validate=True),
            datetime.fromisoformat(entry["created_at"]),
        )
        for v, entry in doc["keys"].items()
    }
    if any(v < 1 for v in keys):
        raise KeyringInvalid("key versions start at 1")
    return VersionedKeys(
        primary=int(doc["primary"]), min_version=int(doc["min_version"]), keys=keys
    )
