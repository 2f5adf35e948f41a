"""New-password policy (SECURITY.md 1, 2): 8..1024 code points after NFKC, Unicode allowed,
no composition rules, common/breached passwords and the user's email refused."""

from __future__ import annotations

import grpc
import pytest

from palisade.auth.errors import (
    PasswordTooCommon,
    PasswordTooLong,
    PasswordTooShort,
    WeakPassword,
)
from palisade.auth.passwords.policy import (
    MAX_LENGTH,
    MIN_LENGTH,
    check_length,
    check_new_password,
)

# A password that is nowhere near any list, cut to any length.
_FILLER = "vR9!tQ2@kL5#mZ8$"


def _pw(n: int) -> str:
    return (_FILLER * (n // len(_FILLER) + 1))[:n]


def test_bounds_are_the_documented_ones() -> None:
    assert MIN_LENGTH == 8
    assert MAX_LENGTH == 1024


def test_error_codes_are_stable() -> None:
    assert PasswordTooShort.code == "password_too_short"
    assert PasswordTooLong.code == "password_too_long"
    assert PasswordTooCommon.code == "password_too_common"
    for error in (PasswordTooShort, PasswordTooLong, PasswordTooCommon):
        assert issubclass(error, WeakPassword)
        assert error.status == grpc.StatusCode.INVALID_ARGUMENT


# --- length ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 7])
def test_too_short(n) -> None:
    with pytest.raises(PasswordTooShort) as caught:
        check_new_password(_pw(n))
    assert type(caught.value) is PasswordTooShort
    assert caught.value.code == "password_too_short"


@pytest.mark.parametrize("n", [8, 9, 64, 65, 1023, 1024])
def test_lengths_in_range_pass(n) -> None:
    assert check_new_password(_pw(n)) is None


@pytest.mark.parametrize("n", [1025, 2048, 100_000])
def test_too_long(n) -> None:
    with pytest.raises(PasswordTooLong) as caught:
        check_new_password(_pw(n))
    assert type(caught.value) is PasswordTooLong
    assert caught.value.code == "password_too_long"


def test_lengths_count_code_points_not_bytes() -> None:
    check_new_password("\U0001f511" * 8)  # 8 code points, 32 bytes
    check_new_password("\u00e9\U0001f511" * 512)  # 1024 code points, 3072 bytes
    with pytest.raises(PasswordTooShort):
        check_new_password("\U0001f511" * 7)  # 28 bytes, but 7 code points
    with pytest.raises(PasswordTooLong):
        check_new_password("\U0001f511" * 1025)


def test_length_is_counted_after_nfkc_composition() -> None:
    # 8 code points as typed ("e" + combining acute), 7 after NFKC ("é").
    typed = "e\u0301" + "kq7#zp"
    assert len(typed) == 8
    with pytest.raises(PasswordTooShort):
        check_new_password(typed)


def test_length_is_counted_after_nfkc_expansion() -> None:
    # Three ligatures "ﬃ" are 3 code points as typed, 9 after NFKC.
    check_new_password("\ufb03\ufb03\ufb03")
    with pytest.raises(PasswordTooLong):
        check_new_password("\ufb03" * 342)  # 342 typed, 1026 normalized


def test_1024_after_nfkc_passes_and_1025_fails() -> None:
    check_new_password("\ufb03" * 341 + "x")  # 1023 + 1
    with pytest.raises(PasswordTooLong):
        check_new_password("\ufb03" * 341 + "xy")


def test_check_length_returns_the_nfkc_form_and_only_checks_the_upper_bound() -> None:
    assert check_length("\ufb01ne") == "fine"
    assert check_length("") == ""  # used at login: short passwords are just wrong there
    assert check_length(_pw(1024)) == _pw(1024)
    with pytest.raises(PasswordTooLong):
        check_length(_pw(1025))


def _normalize_spy(monkeypatch) -> list[int]:
    """Records the length of every string password_policy hands to NFKC."""
    import unicodedata

    from palisade.auth.passwords import policy as password_policy

    seen: list[int] = []
    real = unicodedata.normalize

    def spy(form, text):
        seen.append(len(text))
        return real(form, text)

    monkeypatch.setattr(password_policy.unicodedata, "normalize", spy)
    return seen


def test_a_1mb_ascii_password_is_refused_before_any_normalization(monkeypatch) -> None:
    seen = _normalize_spy(monkeypatch)
    with pytest.raises(PasswordTooLong):
        check_new_password("a" * 1_000_000)
    with pytest.raises(PasswordTooLong):
        check_length("a" * 1_000_000)
    assert seen == []  # no megabyte of work: refused on its raw length


def test_a_1mb_password_of_nfkc_expanding_characters_is_refused_before_nfkc(monkeypatch) -> None:
    # U+FDFA expands to 18 code points under NFKC: normalizing first turns 1 MB of input into
    # 6 million code points of work on the event loop before the length check refuses it.
    seen = _normalize_spy(monkeypatch)
    with pytest.raises(PasswordTooLong):
        check_length("\ufdfa" * 333_334)  # 1 MB of UTF-8
    assert seen == []


# --- Unicode and composition ---------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "correct horse battery staple",  # all lowercase passphrase, spaces
        "alllowercaseletterspassphrase",
        "ALLUPPERCASEPASSPHRASE",
        "73910462851937",  # digits only
        "пароль безопасный сегодня",
        "密码是安全的吗你好世界",
        "\U0001f511\U0001f512\U0001f513\U0001f510\U0001f5dd\U0001f6aa\U0001f3e0\U0001f30d",
        "mañana será otro día",
        "  leading and trailing spaces  ",
        "tab\tinside\tthis\tone",
    ],
)
def test_unicode_and_no_composition_rules(password) -> None:
    assert check_new_password(password) is None


# --- common and breached -------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "password",
        "Password",
        "PASSWORD",
        "pAsSwOrD",
        "QWERTY123",
        "qwerty123",
        "Qwerty123",
        "12345678",
        "iloveyou",
        "ILoveYou",
        "Passw0rd",
        "trustno1",
        "Football",
        "password1",
        "\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44",  # fullwidth "password"
        "\uff30\uff41\uff53\uff53\uff57\uff4f\uff52\uff44",  # fullwidth "Password"
    ],
)
def test_common_passwords_are_refused_regardless_of_case(password) -> None:
    with pytest.raises(PasswordTooCommon) as caught:
        check_new_password(password)
    assert type(caught.value) is PasswordTooCommon
    assert caught.value.code == "password_too_common"
    assert caught.value.message == PasswordTooCommon.default_message


def test_length_is_checked_before_commonness() -> None:
    # "qwerty" is common but too short: the length rule answers.
    with pytest.raises(PasswordTooShort):
        check_new_password("qwerty")


# --- the user's email ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "password",
    [
        "alice.smith@example.com",
        "Alice.Smith@Example.COM",
        "ALICE.SMITH@EXAMPLE.COM",
        "alice.smith",
        "Alice.Smith",
        "ALICE.SMITH",
    ],
)
def test_the_email_or_its_local_part_is_refused(password) -> None:
    with pytest.raises(PasswordTooCommon) as caught:
        check_new_password(password, email="alice.smith@example.com")
    assert type(caught.value) is PasswordTooCommon
    assert caught.value.code == "password_too_common"


@pytest.mark.parametrize("email", ["bob@example.com", "al@example.org", "x@longdomain.example"])
def test_the_whole_email_is_refused_even_with_a_short_local_part(email) -> None:
    assert len(email) >= MIN_LENGTH
    with pytest.raises(PasswordTooCommon):
        check_new_password(email, email=email)
    with pytest.raises(PasswordTooCommon):
        check_new_password(email.upper(), email=email)


def test_a_password_that_merely_contains_the_email_is_not_refused() -> None:
    check_new_password("alice.smith rides a green bicycle", email="alice.smith@example.com")


def test_no_email_given_checks_nothing_about_email() -> None:
    check_new_password("alice.smith@example.com")
    check_new_password("alice.smith@example.com", email="")
