"""The unusable-password marker (a never-verified account taken back by magic link): no password
verifies against it, checking it never raises, and it costs one Argon2id verification, as a
wrong password does, so a login cannot tell such an account from a wrong guess."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from palisade.auth.passwords.hashing import UNUSABLE_PASSWORD_HASH, PasswordHasher


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    h = PasswordHasher(memory_kib=1024, time_cost=1, parallelism=1, threads=1)
    yield h
    h.close()


class _CountingArgon2:
    """Wraps argon2's hasher, counting verifications (the real work still runs)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.verified = 0

    def verify(self, stored: str, secret: bytes) -> bool:
        self.verified += 1
        return bool(self.inner.verify(stored, secret))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("password", ["", "correct horse battery staple", "!unusable", "é" * 64])
async def test_no_password_verifies_against_the_marker(
    hasher: PasswordHasher, password: str
) -> None:
    result = await hasher.verify(UNUSABLE_PASSWORD_HASH, password)
    assert result.ok is False
    assert result.needs_rehash is False


async def test_the_marker_costs_what_a_wrong_password_costs(hasher: PasswordHasher) -> None:
    counting = _CountingArgon2(hasher._argon2)
    hasher._argon2 = counting  # type: ignore[assignment]
    real = await hasher.hash("the real passphrase")
    assert (await hasher.verify(real, "a wrong guess")).ok is False
    wrong = counting.verified
    assert (await hasher.verify(UNUSABLE_PASSWORD_HASH, "a wrong guess")).ok is False
    assert counting.verified - wrong == wrong == 1
