"""Password hashing: Argon2id (PHC strings), legacy bcrypt verified and upgraded.

Hashing runs on a dedicated thread pool (argon2-cffi releases the GIL), never on the event
loop, so logins saturate the cores while token validation keeps answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import bcrypt
from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
# Stored instead of a hash when an account's password must stop working (a never-verified
# account taken over by its address's owner: accounts/address_proof.py). Neither a PHC string
# nor bcrypt, so nothing verifies against it; checking it costs what a wrong password costs.
UNUSABLE_PASSWORD_HASH = "!unusable"  # noqa: S105 (a marker, not a secret)
_BCRYPT_MAX_BYTES = 72


# Hashing threads run at a lower scheduling priority: they still use every idle cycle, but the
# event loop (token validation, refreshes) and other processes preempt them, so a login storm
# saturating the cores does not turn into latency for everything else.
HASHING_NICENESS = 10


def _lower_priority() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not everywhere; a nicety, not safety
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


@dataclass(frozen=True)
class Verification:
    ok: bool
    # The stored hash should be replaced (legacy bcrypt, or outdated Argon2 parameters).
    needs_rehash: bool = False


def prepare(password: str) -> bytes:
    """NFKC, as NIST SP 800-63B asks for Unicode passwords; no case folding, no truncation."""
    return unicodedata.normalize("NFKC", password).encode("utf-8")


class PasswordHasher:
    def __init__(self, *, memory_kib: int, time_cost: int, parallelism: int, threads: int) -> None:
        self._argon2 = Argon2Hasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="argon2", initializer=_lower_priority
        )
        # Unknown users are checked against this, so they cost what real users cost.
        self._dummy_hash = self._argon2.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._argon2.hash, prepare(password))

    async def verify(self, stored_hash: str, password: str) -> Verification:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._verify, stored_hash, password)

    async def burn(self, password: str) -> None:
        """Spends one verification's worth of time, for a user that does not exist."""
        await self.verify(self._dummy_hash, password)

    def _verify(self, stored_hash: str, password: str) -> Verification:
        secret = prepare(password)
        if not stored_hash.isascii():  # a corrupt hash fails the login, it does not crash it
            return Verification(ok=False)
        if stored_hash == UNUSABLE_PASSWORD_HASH:
            self._burn(secret)  # the same work as a wrong password: no oracle on the state
            return Verification(ok=False)
        if stored_hash.startswith(_BCRYPT_PREFIXES):
            ok = _check_bcrypt(stored_hash.encode("ascii"), password, secret)
            return Verification(ok=ok, needs_rehash=ok)
        try:
            self._argon2.verify(stored_hash, secret)
        except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
            return Verification(ok=False)
        return Verification(ok=True, needs_rehash=self._argon2.check_needs_rehash(stored_hash))

    def _burn(self, secret: bytes) -> None:
        with contextlib.suppress(VerifyMismatchError, VerificationError, InvalidHashError):
            self._argon2.verify(self._dummy_hash, secret)


def _check_bcrypt(stored_hash: bytes, password: str, normalized: bytes) -> bool:
    """A legacy bcrypt hash: of the raw UTF-8 bytes (what legacy systems hashed), else NFKC.

    Legacy systems truncated at 72 bytes; so must the check of their hashes. The Argon2id hash
    that replaces it on success covers the whole (NFKC) password.
    """
    raw = password.encode("utf-8")
    candidates = [raw] if raw == normalized else [raw, normalized]
    try:
        return any(bcrypt.checkpw(c[:_BCRYPT_MAX_BYTES], stored_hash) for c in candidates)
    except ValueError:  # malformed salt or cost
        return False
