"""TOTP against RFC 6238 Appendix B and RFC 4226 Appendix D, and the drift window."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlparse

import pyotp
import pytest

from palisade.auth.mfa import backup_codes, totp

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()

# RFC 4226 Appendix D: HOTP values for counters 0..9 (6 digits).
HOTP_VECTORS = [
    "755224", "287082", "359152", "969429", "338314",
    "254676", "287922", "162583", "399871", "520489",
]  # fmt: skip

# RFC 6238 Appendix B, SHA-1 rows: (Unix time, 8-digit TOTP).
TOTP_VECTORS = [
    (59, "94287082"),
    (1111111109, "07081804"),
    (1111111111, "14050471"),
    (1234567890, "89005924"),
    (2000000000, "69279037"),
    (20000000000, "65353130"),
]


@pytest.mark.parametrize(("counter", "expected"), list(enumerate(HOTP_VECTORS)))
def test_hotp_matches_rfc4226_appendix_d(counter: int, expected: str) -> None:
    assert totp.code_for_step(RFC_SECRET, counter) == expected


@pytest.mark.parametrize(("unix_time", "expected"), TOTP_VECTORS)
def test_totp_matches_rfc6238_appendix_b(unix_time: int, expected: str) -> None:
    # The RFC prints 8 digits; a 6-digit code is the same value mod 10^6.
    assert pyotp.TOTP(RFC_SECRET, digits=8).at(unix_time) == expected
    assert totp.code_for_step(RFC_SECRET, totp.step_at(unix_time)) == expected[-6:]
    assert totp.matching_step(RFC_SECRET, expected[-6:], unix_time) == unix_time // 30


def test_one_step_of_drift_either_way_and_no_more() -> None:
    secret = totp.new_secret()
    now = 1_700_000_015.0
    step = totp.step_at(now)
    for offset in (-1, 0, 1):
        code = totp.code_for_step(secret, step + offset)
        assert totp.matching_step(secret, code, now) == step + offset
    for offset in (-2, 2, -3, 3):
        code = totp.code_for_step(secret, step + offset)
        if code in {totp.code_for_step(secret, step + o) for o in (-1, 0, 1)}:
            continue  # a 1-in-10^6 collision with a code inside the window
        assert totp.matching_step(secret, code, now) is None


@pytest.mark.parametrize("bad", ["", "12345", "1234567", "12345a", "１２３４５６", "12 34 5"])
def test_malformed_codes_never_match(bad: str) -> None:
    assert totp.matching_step(RFC_SECRET, bad, 59) is None


def test_spaces_inside_a_code_are_accepted() -> None:
    code = totp.code_for_step(RFC_SECRET, 1)
    assert totp.matching_step(RFC_SECRET, f"{code[:3]} {code[3:]}", 30) == 1


def test_secret_is_160_bits_of_base32_and_fresh_each_time() -> None:
    secrets = {totp.new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert len(base64.b32decode(secret)) == 20


def test_provisioning_uri_is_what_authenticator_apps_read() -> None:
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, account="ada@example.com", issuer="Palisade")
    parsed = urlparse(uri)
    assert parsed.scheme == "otpauth"
    assert parsed.netloc == "totp"
    assert parsed.path == "/Palisade:ada%40example.com"
    query = parse_qs(parsed.query)
    assert query["secret"] == [secret]
    assert query["issuer"] == ["Palisade"]
    # pyotp round-trips it, as Google Authenticator would read it.
    parsed_totp = pyotp.parse_uri(uri)
    assert parsed_totp.secret == secret
    assert parsed_totp.now() == pyotp.TOTP(secret).now()


def test_backup_codes_are_ten_distinct_csprng_codes() -> None:
    codes = backup_codes.new_codes()
    assert len(codes) == 10 == len(set(codes))
    assert all(len(c) == 11 and c[5] == "-" for c in codes)
    assert set(codes).isdisjoint(backup_codes.new_codes())


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("abcde-fghjk", "abcde-fghjk"),
        ("ABCDE-FGHJK", "abcde-fghjk"),
        ("abcdefghjk", "abcde-fghjk"),
        (" abcde fghjk ", "abcde-fghjk"),
        ("abcde-fghj", None),
        ("abcde-fghjkm", None),
        ("abcde-fgh0k", None),  # 0 is not in the alphabet
        ("", None),
    ],
)
def test_backup_code_normalization(typed: str, expected: str | None) -> None:
    assert backup_codes.normalize_code(typed) == expected
