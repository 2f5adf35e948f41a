"""Password hashing (SECURITY.md 1, 4, 5, 8): Argon2id PHC strings, NFKC, no truncation,
legacy bcrypt, clean failure on corrupt hashes, and the dummy check for unknown users."""

from __future__ import annotations

import re
import threading

import argon2
import bcrypt
import pytest

from palisade.auth.passwords.hashing import PasswordHasher, Verification, prepare

MEMORY_KIB = 19456
TIME_COST = 2
PARALLELISM = 1
PHC = re.compile(
    r"\$argon2id\$v=19\$m=19456,t=2,p=1\$(?P<salt>[A-Za-z0-9+/]{22})\$(?P<hash>[A-Za-z0-9+/]{43})"
)


@pytest.fixture
def hasher():
    h = PasswordHasher(
        memory_kib=MEMORY_KIB, time_cost=TIME_COST, parallelism=PARALLELISM, threads=2
    )
    yield h
    h.close()


@pytest.fixture
def argon2_calls(monkeypatch):
    """Records every call to argon2-cffi's verify: (stored hash, thread name)."""
    calls: list[tuple[str, str]] = []
    original = argon2.PasswordHasher.verify

    def spy(self, stored, password):
        calls.append((stored, threading.current_thread().name))
        return original(self, stored, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", spy)
    return calls


def _legacy_bcrypt(password: str, prefix: bytes = b"2b") -> str:
    return bcrypt.hashpw(prepare(password)[:72], bcrypt.gensalt(rounds=4, prefix=prefix)).decode()


def _argon2_hash(password: str, **params) -> str:
    return argon2.PasswordHasher(**params).hash(prepare(password))


# --- format and salts ------------------------------------------------------------------------


async def test_hash_is_a_phc_argon2id_string_with_the_configured_parameters(hasher) -> None:
    stored = await hasher.hash("correct horse battery staple")
    assert PHC.fullmatch(stored), stored


async def test_same_password_twice_gives_different_salts_and_hashes(hasher) -> None:
    first = await hasher.hash("correct horse battery staple")
    second = await hasher.hash("correct horse battery staple")
    assert first != second
    assert PHC.fullmatch(first)["salt"] != PHC.fullmatch(second)["salt"]
    assert (await hasher.verify(first, "correct horse battery staple")).ok
    assert (await hasher.verify(second, "correct horse battery staple")).ok


async def test_hash_does_not_contain_the_password(hasher) -> None:
    stored = await hasher.hash("correct horse battery staple")
    assert "correct" not in stored
    assert "horse" not in stored


# --- verification ------------------------------------------------------------------------------


async def test_verify_ok_and_mismatch(hasher) -> None:
    stored = await hasher.hash("correct horse battery staple")
    assert await hasher.verify(stored, "correct horse battery staple") == Verification(
        ok=True, needs_rehash=False
    )
    assert await hasher.verify(stored, "correct horse battery stapler") == Verification(
        ok=False, needs_rehash=False
    )
    assert await hasher.verify(stored, "") == Verification(ok=False, needs_rehash=False)


async def test_no_case_folding(hasher) -> None:
    stored = await hasher.hash("Correct Horse Battery Staple")
    assert not (await hasher.verify(stored, "correct horse battery staple")).ok
    assert not (await hasher.verify(stored, "CORRECT HORSE BATTERY STAPLE")).ok
    assert (await hasher.verify(stored, "Correct Horse Battery Staple")).ok


@pytest.mark.parametrize(
    ("hashed", "presented"),
    [
        ("caf\u00e9 au lait!", "cafe\u0301 au lait!"),  # composed vs decomposed
        ("cafe\u0301 au lait!", "caf\u00e9 au lait!"),
        ("\uff50\uff41\uff53\uff53 phrase 1", "pass phrase 1"),  # fullwidth letters
        ("\ufb01nancial report", "financial report"),  # ligature "fi"
        ("x\u00b2 + y\u00b2 = z\u00b2", "x2 + y2 = z2"),  # superscripts
    ],
)
async def test_nfkc_equivalent_passwords_verify(hasher, hashed, presented) -> None:
    stored = await hasher.hash(hashed)
    assert (await hasher.verify(stored, presented)).ok


def test_prepare_is_nfkc_utf8_without_case_folding_or_truncation() -> None:
    assert prepare("Ab\ufb01") == b"Abfi"
    assert prepare("e\u0301") == "\u00e9".encode()
    long = "\u20ac" * 500
    assert prepare(long) == long.encode("utf-8")
    assert len(prepare(long)) == 1500


@pytest.mark.parametrize(
    ("base", "tail_a", "tail_b"),
    [
        ("a" * 72, "X", "Y"),  # differs at byte 73
        ("a" * 200, "X", "Y"),  # far past 72
        ("\u00e9" * 36, "a", "b"),  # 72 bytes of 2-byte characters, then a difference
        ("\u20ac" * 24, "\u20ac", "\u00a3"),  # 72 bytes of 3-byte characters
        ("\U0001f511" * 18, "\U0001f512", "\U0001f513"),  # 72 bytes of 4-byte characters
        ("\u20ac" * 23 + "abc", "d", "e"),  # differs at byte 73 after mixed widths
    ],
    ids=["ascii-72", "ascii-200", "2-byte", "3-byte", "4-byte", "mixed"],
)
async def test_a_difference_after_byte_72_still_matters(hasher, base, tail_a, tail_b) -> None:
    assert len(base.encode()) >= 72
    stored = await hasher.hash(base + tail_a)
    assert (await hasher.verify(stored, base + tail_a)).ok
    assert not (await hasher.verify(stored, base + tail_b)).ok
    assert not (await hasher.verify(stored, base)).ok
    truncated = (base + tail_a).encode()[:72].decode("utf-8", errors="ignore")
    assert not (await hasher.verify(stored, truncated)).ok


async def test_a_1024_character_password_round_trips(hasher) -> None:
    password = "\U0001f511" * 1023 + "x"
    stored = await hasher.hash(password)
    assert (await hasher.verify(stored, password)).ok
    assert not (await hasher.verify(stored, "\U0001f511" * 1023 + "y")).ok


# --- rehash on outdated parameters -----------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"memory_cost": 8192, "time_cost": 2, "parallelism": 1},  # less memory
        {"memory_cost": 19456, "time_cost": 1, "parallelism": 1},  # fewer passes
        {"memory_cost": 19456, "time_cost": 2, "parallelism": 2},  # other lanes
        {"memory_cost": 19456, "time_cost": 2, "parallelism": 1, "salt_len": 8},
        {"memory_cost": 19456, "time_cost": 2, "parallelism": 1, "hash_len": 16},
        {"memory_cost": 19456, "time_cost": 2, "parallelism": 1, "type": argon2.Type.I},
        {"memory_cost": 19456, "time_cost": 3, "parallelism": 1},  # stronger is still "other"
    ],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()),
)
async def test_hash_with_other_parameters_verifies_and_needs_rehash(hasher, params) -> None:
    stored = _argon2_hash("correct horse battery staple", **params)
    assert await hasher.verify(stored, "correct horse battery staple") == Verification(
        ok=True, needs_rehash=True
    )
    assert await hasher.verify(stored, "wrong horse battery staple") == Verification(
        ok=False, needs_rehash=False
    )


async def test_hash_with_current_parameters_does_not_need_rehash(hasher) -> None:
    stored = _argon2_hash(
        "correct horse battery staple", memory_cost=19456, time_cost=2, parallelism=1
    )
    assert await hasher.verify(stored, "correct horse battery staple") == Verification(
        ok=True, needs_rehash=False
    )


# --- legacy bcrypt ---------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [b"2b", b"2a"])
async def test_legacy_bcrypt_verifies_and_needs_rehash(hasher, prefix) -> None:
    stored = _legacy_bcrypt("legacy password 123", prefix)
    assert stored.startswith("$" + prefix.decode() + "$")
    assert await hasher.verify(stored, "legacy password 123") == Verification(
        ok=True, needs_rehash=True
    )


async def test_legacy_2y_bcrypt_verifies_and_needs_rehash(hasher) -> None:
    stored = "$2y$" + _legacy_bcrypt("legacy password 123")[4:]  # PHP's crypt() spelling
    assert await hasher.verify(stored, "legacy password 123") == Verification(
        ok=True, needs_rehash=True
    )


@pytest.mark.parametrize("prefix", [b"2b", b"2a"])
async def test_legacy_bcrypt_wrong_password_fails_cleanly(hasher, prefix) -> None:
    stored = _legacy_bcrypt("legacy password 123", prefix)
    for wrong in ["legacy password 124", "LEGACY PASSWORD 123", "", "\x00", "\U0001f511" * 40]:
        assert await hasher.verify(stored, wrong) == Verification(ok=False, needs_rehash=False)


async def test_legacy_bcrypt_of_a_long_password_verifies_with_the_full_password(hasher) -> None:
    # The legacy system saw (and truncated) the whole password; the check must accept it.
    password = "\u00e9" * 40 + "tail"  # 84 bytes
    stored = _legacy_bcrypt(password)
    assert (await hasher.verify(stored, password)).ok


async def test_legacy_bcrypt_applies_nfkc(hasher) -> None:
    stored = _legacy_bcrypt("caf\u00e9 legacy!")
    assert (await hasher.verify(stored, "cafe\u0301 legacy!")).ok


@pytest.mark.parametrize(
    "password",
    [
        "cafe\u0301 legacy password",  # decomposed accent (NFKC composes it)
        "\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44\uff11\uff12\uff13",  # fullwidth
    ],
)
async def test_legacy_bcrypt_of_the_raw_utf8_bytes_verifies(hasher, password) -> None:
    # Legacy systems hashed the bytes as typed, not NFKC: those users must still get in.
    assert prepare(password) != password.encode("utf-8")
    stored = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=4)).decode()
    assert await hasher.verify(stored, password) == Verification(ok=True, needs_rehash=True)
    # The Argon2id hash that replaces it is of the NFKC form, which keeps working.
    assert (await hasher.verify(await hasher.hash(password), password)).ok
    assert not (await hasher.verify(stored, password + "x")).ok


async def test_legacy_bcrypt_does_not_touch_argon2(hasher, argon2_calls) -> None:
    stored = _legacy_bcrypt("legacy password 123")
    assert (await hasher.verify(stored, "legacy password 123")).ok
    assert argon2_calls == []


# --- corrupt and unknown hashes ----------------------------------------------------------------


def _corrupt_hashes() -> list[str]:
    argon = _argon2_hash("pw", memory_cost=19456, time_cost=2, parallelism=1)
    legacy = _legacy_bcrypt("pw")
    return [
        "",
        " ",
        "garbage",
        "pw",  # a plaintext "hash" equal to the password must not verify
        "$",
        "$$$$",
        "$argon2id$",
        "$argon2id$v=19$m=19456,t=2,p=1$",
        "$argon2id$v=19$m=19456,t=2,p=1$xx$yy",
        "$argon2id$v=19$m=-1,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g",
        "$argon2id$v=99$m=19456,t=2,p=1" + argon[len("$argon2id$v=19$m=19456,t=2,p=1") :],
        argon[:-5],
        argon + "AAAA",
        argon.replace("$argon2id$", "$argon2xx$"),
        "$argon2id$v=19$m=19456,t=2,p=1$\u00e9\u00e9\u00e9\u00e9$\u00e9\u00e9\u00e9\u00e9",
        "$scrypt$ln=16,r=8,p=1$c2FsdA$aGFzaA",
        "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/",
        "$5$rounds=5000$salt$hash",
        "pbkdf2_sha256$600000$salt$hash",
        "$2b$",
        "$2a$",
        "$2y$",
        "$2b$garbage",
        "$2b$04$tooshort",
        legacy[:-5],
        legacy[:29],
        legacy + "x",
        "$2b$04$" + "\u00e9" * 53,
        "$2b$99$" + legacy[7:],
        "$2b$04$" + "*" * 53,
        "\x00" * 60,
        "\ud800" * 60,
    ]


async def test_corrupt_or_unknown_hashes_fail_cleanly(hasher) -> None:
    failures = []
    for stored in _corrupt_hashes():
        try:
            result = await hasher.verify(stored, "pw")
        except Exception as exc:
            failures.append((stored[:40], f"{type(exc).__name__}: {exc}"))
            continue
        if result != Verification(ok=False, needs_rehash=False):
            failures.append((stored[:40], result))
    assert failures == []


@pytest.mark.parametrize(
    "stored",
    ["$2b$garbage", "$2a$", "$2b$04$tooshort", "$2b$04$" + "\u00e9" * 53],
    ids=["bcrypt-garbage", "bcrypt-prefix-only", "bcrypt-short", "bcrypt-non-ascii"],
)
async def test_corrupt_bcrypt_hash_fails_cleanly(hasher, stored) -> None:
    assert await hasher.verify(stored, "pw") == Verification(ok=False, needs_rehash=False)


async def test_non_ascii_argon2_hash_fails_cleanly(hasher) -> None:
    stored = "$argon2id$v=19$m=19456,t=2,p=1$\u00e9\u00e9\u00e9\u00e9$\u00e9\u00e9\u00e9\u00e9"
    assert await hasher.verify(stored, "pw") == Verification(ok=False, needs_rehash=False)


# --- unknown users, threads ---------------------------------------------------------------------


async def test_burn_does_exactly_one_argon2_verification_at_full_cost(hasher, argon2_calls):
    assert await hasher.burn("any password at all") is None
    assert len(argon2_calls) == 1
    dummy, _ = argon2_calls[0]
    assert PHC.fullmatch(dummy), "the dummy hash must cost what a real user's hash costs"


async def test_burn_takes_the_same_work_as_a_real_verification(hasher, argon2_calls) -> None:
    stored = await hasher.hash("correct horse battery staple")
    await hasher.verify(stored, "wrong password")
    await hasher.burn("wrong password")
    assert len(argon2_calls) == 2
    real, dummy = argon2_calls[0][0], argon2_calls[1][0]
    assert real.split("$")[:4] == dummy.split("$")[:4]  # same type, version and parameters


@pytest.mark.parametrize("password", ["", "x", "\U0001f511" * 1024, "\x00\x00"])
async def test_burn_never_raises(hasher, password) -> None:
    await hasher.burn(password)


async def test_hash_work_runs_on_the_argon2_pool_not_the_event_loop(hasher, argon2_calls) -> None:
    stored = await hasher.hash("correct horse battery staple")
    await hasher.verify(stored, "correct horse battery staple")
    await hasher.burn("x")
    assert len(argon2_calls) == 2
    loop_thread = threading.current_thread().name
    for _, thread in argon2_calls:
        assert thread.startswith("argon2")
        assert thread != loop_thread
