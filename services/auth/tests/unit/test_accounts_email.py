"""normalize_email (SECURITY.md 6: `Alice@x` and `alice@x` share one account and one count)."""

from __future__ import annotations

import pytest

from palisade.auth.accounts.service import MAX_EMAIL_LENGTH, normalize_email
from palisade.auth.errors import InvalidEmail


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice@x.com", "alice@x.com"),
        ("Alice@x.com", "alice@x.com"),
        ("ALICE@X.COM", "alice@x.com"),
        ("  alice@x.com  ", "alice@x.com"),
        ("\talice@x.com\r\n", "alice@x.com"),
        ("\u00a0alice@x.com\u3000", "alice@x.com"),  # no-break and ideographic spaces
        ("\uff41\uff4c\uff49\uff43\uff45@x.com", "alice@x.com"),  # fullwidth
        ("alice@\uff58\uff0e\uff43\uff4f\uff4d", "alice@x.com"),  # fullwidth domain and dot
        ("\u212blice@x.com", "\u00e5lice@x.com"),  # Angstrom sign -> a-ring
        ("Jos\u0065\u0301@x.com", "jos\u00e9@x.com"),  # decomposed -> composed
        ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),
    ],
)
def test_normalizes(raw, expected) -> None:
    assert normalize_email(raw) == expected


def test_case_variants_normalize_alike() -> None:
    variants = [
        "Alice@x.com",
        "alice@x.com",
        "ALICE@X.COM",
        " aLiCe@X.cOm ",
        "ａｌｉｃｅ@ｘ.ｃｏｍ",
    ]
    assert {normalize_email(v) for v in variants} == {"alice@x.com"}


def test_normalization_is_idempotent() -> None:
    once = normalize_email("  Ｊｏｓｅ\u0301@Example.COM ")
    assert normalize_email(once) == once


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "alice",
        "alice@",
        "@x.com",
        "alice@x",
        "alice@.",
        "a@b@x.com",
        "alice@@x.com",
        "alice @x.com",
        "alice@x .com",
        "alice@x.com bob@y.com",
        "alice@x.com\nbcc@evil.com",
        "alice@x.com\r\nRCPT TO:<evil@y.com>",
        "alice\t@x.com",
        "a" * 65 + "@x.com",  # local part over 64
    ],
)
def test_malformed_addresses_are_refused(raw) -> None:
    with pytest.raises(InvalidEmail) as caught:
        normalize_email(raw)
    assert type(caught.value) is InvalidEmail
    assert caught.value.code == "invalid_email"


def test_fullwidth_at_sign_is_folded_like_any_other_character() -> None:
    assert normalize_email("alice\uff20x.com") == "alice@x.com"
    with pytest.raises(InvalidEmail):
        normalize_email("alice\uff20bob@x.com")  # two "@" after NFKC


@pytest.mark.parametrize(
    "raw",
    [
        "ali\x00ce@x.com",
        "alice@x.com\x00",
        "\x00alice@x.com",
        "alice\x1b[31m@x.com",
        "alice\x7f@x.com",
        "alice\x08@x.com",
    ],
    ids=["nul-inside", "nul-trailing", "nul-leading", "escape", "del", "backspace"],
)
def test_control_characters_are_refused(raw) -> None:
    with pytest.raises(InvalidEmail):
        normalize_email(raw)


def test_length_bounds() -> None:
    assert MAX_EMAIL_LENGTH == 254
    local = "a" * 64
    domain_254 = "b" * (254 - 64 - 1 - 4) + ".com"
    at_limit = f"{local}@{domain_254}"
    assert len(at_limit) == 254
    assert normalize_email(at_limit) == at_limit
    over = f"{local}@b{domain_254}"
    assert len(over) == 255
    with pytest.raises(InvalidEmail):
        normalize_email(over)


def test_length_is_checked_after_trimming() -> None:
    address = "a" * 64 + "@" + "b" * 185 + ".com"
    assert len(address) == 254
    assert normalize_email("   " + address + "   ") == address


def test_length_counts_the_nfkc_form() -> None:
    # 250 typed code points, but each U+2474 becomes the 3 code points "(1)": 256 in all.
    address = "a@" + "\u2474" * 3 + "b" * 241 + ".com"
    assert len(address) == 250
    with pytest.raises(InvalidEmail):
        normalize_email(address)


@pytest.mark.parametrize("size", [255, 10_000, 1_000_000])
def test_oversized_addresses_are_refused(size) -> None:
    address = "a@" + "b" * (size - 6) + ".com"
    assert len(address) == size
    with pytest.raises(InvalidEmail):
        normalize_email(address)
