"""Opaque session tokens (SECURITY.md 23): shape, CSPRNG source, hashing and strict parsing."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

import pytest

from palisade.auth.errors import InvalidToken, WrongTokenType
from palisade.auth.sessions import tokens
from palisade.auth.sessions.tokens import TokenKind, check_token, new_token, token_hash
from palisade.common.errors import Unauthenticated

BODY = re.compile(r"[A-Za-z0-9_-]{43}")
PREFIXES = {
    TokenKind.ACCESS: "plsd_at_",
    TokenKind.REFRESH: "plsd_rt_",
    TokenKind.MFA: "plsd_mfa_",
    TokenKind.MAGIC_LINK: "plsd_ml_",
    TokenKind.EMAIL_VERIFICATION: "plsd_ev_",
    TokenKind.PASSWORD_RESET: "plsd_pr_",
    TokenKind.NOT_ME: "plsd_nm_",
    TokenKind.INVITATION: "plsd_inv_",
}
# Each kind and another it must never be mistaken for.
OTHER = {
    TokenKind.ACCESS: TokenKind.REFRESH,
    TokenKind.REFRESH: TokenKind.ACCESS,
    TokenKind.MFA: TokenKind.MAGIC_LINK,
    TokenKind.MAGIC_LINK: TokenKind.MFA,
    # Emailed links pasted into another link's form.
    TokenKind.EMAIL_VERIFICATION: TokenKind.PASSWORD_RESET,
    TokenKind.PASSWORD_RESET: TokenKind.MAGIC_LINK,
    TokenKind.NOT_ME: TokenKind.EMAIL_VERIFICATION,
    TokenKind.INVITATION: TokenKind.MAGIC_LINK,
}


def _body(token: str) -> str:
    [prefix] = [p for p in PREFIXES.values() if token.startswith(p)]
    return token[len(prefix) :]


@pytest.mark.parametrize("kind", list(TokenKind))
def test_new_token_is_prefix_plus_43_base64url_chars_of_32_bytes(kind) -> None:
    token = new_token(kind)
    assert token.startswith(PREFIXES[kind])
    assert len(token) == len(PREFIXES[kind]) + 43
    body = _body(token)
    assert BODY.fullmatch(body)
    assert "=" not in token
    assert len(base64.urlsafe_b64decode(body + "=")) == 32


def test_prefixes_are_the_documented_ones() -> None:
    assert TokenKind.ACCESS.value == "plsd_at_"
    assert TokenKind.REFRESH.value == "plsd_rt_"
    assert {kind: kind.value for kind in TokenKind} == PREFIXES


def test_no_prefix_begins_another() -> None:
    """check_token picks a token's kind by prefix: none may be read as another's."""
    values = [kind.value for kind in TokenKind]
    assert not [(a, b) for a in values for b in values if a != b and b.startswith(a)]


@pytest.mark.parametrize("kind", list(TokenKind))
def test_new_token_body_comes_from_the_csprng(monkeypatch, kind) -> None:
    calls: list[int] = []
    fixed = bytes(range(32))

    def fake_token_bytes(n: int) -> bytes:
        calls.append(n)
        return fixed

    monkeypatch.setattr(secrets, "token_bytes", fake_token_bytes)
    token = new_token(kind)
    assert calls == [32]
    assert token == PREFIXES[kind] + base64.urlsafe_b64encode(fixed).rstrip(b"=").decode()


def test_many_tokens_are_distinct() -> None:
    made = [new_token(TokenKind.ACCESS) for _ in range(5000)]
    made += [new_token(TokenKind.REFRESH) for _ in range(5000)]
    assert len(set(made)) == len(made)
    assert len({_body(t) for t in made}) == len(made)


def test_bodies_are_not_visibly_biased() -> None:
    # 2000 tokens * 42 full characters: every base64url symbol must show up, roughly evenly.
    counts: dict[str, int] = {}
    for _ in range(2000):
        for char in _body(new_token(TokenKind.ACCESS))[:42]:
            counts[char] = counts.get(char, 0) + 1
    assert len(counts) == 64
    expected = 2000 * 42 / 64
    assert all(0.75 * expected < n < 1.25 * expected for n in counts.values())


@pytest.mark.parametrize("kind", list(TokenKind))
def test_token_hash_is_sha256_of_the_whole_token_string(kind) -> None:
    token = new_token(kind)
    digest = token_hash(token)
    assert digest == hashlib.sha256(token.encode("ascii")).digest()
    assert len(digest) == 32
    # The prefix is part of what is hashed: the body alone, or the other kind, differs.
    assert digest != hashlib.sha256(_body(token).encode()).digest()
    assert digest != token_hash(PREFIXES[OTHER[kind]] + _body(token))


@pytest.mark.parametrize("kind", list(TokenKind))
def test_check_token_accepts_its_kind_and_returns_the_lookup_hash(kind) -> None:
    token = new_token(kind)
    assert check_token(token, kind) == hashlib.sha256(token.encode()).digest()


@pytest.mark.parametrize("kind", list(TokenKind))
def test_check_token_refuses_the_other_kind_with_wrong_token_type(kind) -> None:
    token = new_token(OTHER[kind])
    with pytest.raises(WrongTokenType) as caught:
        check_token(token, kind)
    assert type(caught.value) is WrongTokenType
    assert caught.value.code == "wrong_token_type"
    assert isinstance(caught.value, Unauthenticated)


_VALID_BODY = "A" * 42 + "E"


def _malformed_bodies() -> list[tuple[str, str]]:
    return [
        ("empty body", ""),
        ("truncated by one", _VALID_BODY[:-1]),
        ("truncated to half", _VALID_BODY[:21]),
        ("extended by one", _VALID_BODY + "A"),
        ("base64 padding", _VALID_BODY + "="),
        ("std base64 plus", "+" + _VALID_BODY[1:]),
        ("std base64 slash", _VALID_BODY[:-1] + "/"),
        ("dot", _VALID_BODY[:20] + "." + _VALID_BODY[21:]),
        ("trailing newline", _VALID_BODY + "\n"),
        ("trailing space", _VALID_BODY + " "),
        ("trailing crlf", _VALID_BODY + "\r\n"),
        ("inner space", _VALID_BODY[:20] + " " + _VALID_BODY[21:]),
        ("nul", _VALID_BODY[:-1] + "\x00"),
        ("latin-1 letter", _VALID_BODY[:-1] + "é"),
        ("fullwidth letter", _VALID_BODY[:-1] + "Ａ"),
        ("arabic-indic digit", _VALID_BODY[:-1] + "٣"),
        ("superscript two", _VALID_BODY[:-1] + "²"),
        ("lone surrogate", _VALID_BODY[:-1] + "\ud800"),
        ("emoji", _VALID_BODY[:-1] + "🔑"),
        ("kelvin sign", "\u212a" + _VALID_BODY[1:]),
        ("prefix doubled", "plsd_at_" + _VALID_BODY),
        ("huge", "A" * 1_000_000),
    ]


@pytest.mark.parametrize("kind", list(TokenKind))
@pytest.mark.parametrize(("label", "body"), _malformed_bodies(), ids=lambda v: str(v)[:20])
def test_check_token_refuses_malformed_bodies_with_invalid_token(kind, label, body) -> None:
    with pytest.raises(InvalidToken) as caught:
        check_token(PREFIXES[kind] + body, kind)
    assert type(caught.value) is InvalidToken, label
    assert caught.value.code == "invalid_token"


@pytest.mark.parametrize("kind", list(TokenKind))
@pytest.mark.parametrize(
    "token",
    [
        "",
        "plsd_",
        "plsd_at",
        "plsd_rt",
        "garbage",
        _VALID_BODY,  # a body without any prefix
        "PLSD_AT_" + _VALID_BODY,
        "PLSD_RT_" + _VALID_BODY,
        "plsd_xt_" + _VALID_BODY,
        "plsd-at-" + _VALID_BODY,
        "plsd_at" + _VALID_BODY,
        " plsd_at_" + _VALID_BODY,
        "\tplsd_rt_" + _VALID_BODY,
        "\nplsd_at_" + _VALID_BODY,
        "\ufeffplsd_at_" + _VALID_BODY,  # byte order mark
        "ｐｌｓｄ_at_" + _VALID_BODY,  # fullwidth prefix
        "plsd_аt_" + _VALID_BODY,  # Cyrillic "а" in the prefix
        "Bearer plsd_at_" + _VALID_BODY,
        "\x00" * 51,
        "é" * 51,
        "\ud800" * 51,
    ],
    ids=lambda v: repr(v)[:24],
)
def test_check_token_refuses_unprefixed_garbage_with_invalid_token(kind, token) -> None:
    with pytest.raises(InvalidToken) as caught:
        check_token(token, kind)
    assert type(caught.value) is InvalidToken


@pytest.mark.parametrize("kind", list(TokenKind))
def test_every_single_character_substitution_outside_the_alphabet_is_refused(kind) -> None:
    token = new_token(kind)
    prefix_len = len(PREFIXES[kind])
    for i in range(prefix_len, len(token)):
        for bad in ("=", "+", "/", " ", "é", "\x7f"):
            edited = token[:i] + bad + token[i + 1 :]
            with pytest.raises(InvalidToken) as caught:
                check_token(edited, kind)
            assert type(caught.value) is InvalidToken


def test_check_token_never_leaks_a_non_palisade_exception_on_odd_strings() -> None:
    codes = [*range(0, 45), 46, 47, *range(58, 65), *range(91, 95), 96, *range(123, 400)]
    odd = ["plsd_at_" + chr(c) * 43 for c in [*codes, 0xD800, 0xFFFF]]
    for token in odd:
        with pytest.raises(InvalidToken):
            check_token(token, TokenKind.ACCESS)


def test_tokens_module_uses_32_byte_bodies() -> None:
    assert tokens.TOKEN_BYTES == 32
