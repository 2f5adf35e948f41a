"""Blind index tokens: stable, normalized, context-separated, versioned, rotatable."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct

import grpc
import pytest

from palisade.crypto.blind_index import index_token
from palisade.crypto.errors import BatchTooLarge, InvalidValue, MissingAssociatedData
from palisade.crypto.normalize import MAX_VALUE_CHARS, Normalization, normalize
from palisade.crypto.service import IndexRequest

EMAIL = Normalization.EMAIL
PHONE = Normalization.PHONE
CTX = b"ws_1/visitors.email"
TOKEN = re.compile(r"bi1\.(\d+)\.([A-Za-z0-9_-]{43})")


def _token(crypto, value, normalization=EMAIL, context=CTX, *, all_versions=False):
    (result,) = crypto.service.blind_index(
        [IndexRequest(value, normalization, context)], all_versions=all_versions
    )
    return result


def _one(crypto, value, normalization=EMAIL, context=CTX):
    (token,) = _token(crypto, value, normalization, context)
    return token


# -- the token ------------------------------------------------------------------------------------


def test_token_format_and_exact_value(crypto):
    token = _one(crypto, "alice@example.com")
    assert token.key_version == 1
    match = TOKEN.fullmatch(token.token)
    assert match is not None, token.token
    assert match.group(1) == "1"
    # HMAC-SHA256 under the *index* key over the documented, length-prefixed message.
    key = crypto.keyring.index.keys[1].key
    value = b"alice@example.com"
    message = b"palisade-bi1" + struct.pack(">I", len(CTX)) + CTX + struct.pack(">I", len(value))
    digest = hmac.new(key, message + value, hashlib.sha256).digest()
    assert match.group(2) == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    # ... and not under the data key.
    data_key = crypto.keyring.data.keys[1].key
    assert hmac.new(data_key, message + value, hashlib.sha256).digest() != digest


def test_token_is_stable(crypto):
    first = _one(crypto, "alice@example.com")
    assert _one(crypto, "alice@example.com") == first
    # The same keyring loaded by another service instance gives the same token.
    assert index_token(crypto.keyring.index.keys[1], "alice@example.com", CTX) == first.token


def test_token_is_keyed(make_crypto):
    a, b = make_crypto(), make_crypto()  # two independent keyrings
    assert _one(a, "alice@example.com").token != _one(b, "alice@example.com").token


def test_different_values_give_different_tokens(crypto):
    tokens = {_one(crypto, f"user{i}@example.com").token for i in range(50)}
    assert len(tokens) == 50


# -- normalization --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "normalization"),
    [
        (" Alice@Example.COM ", "alice@example.com", EMAIL),
        ("ALICE@EXAMPLE.COM", "alice@example.com", EMAIL),
        ("\uff41lice@example.com", "alice@example.com", EMAIL),  # fullwidth a (NFKC)
        # Greek final sigma: lower() keeps ς and σ apart, case folding does not.
        ("\u03a3\u0391\u03a3@example.gr", "\u03c3\u03b1\u03c3@example.gr", EMAIL),
        ("\u03c3\u03b1\u03c2@example.gr", "\u03c3\u03b1\u03c3@example.gr", EMAIL),
        ("stra\u00dfe@example.de", "STRASSE@example.de", EMAIL),  # ß folds to ss
        ("+44 20 7946-0958", "0044 (20) 79460958", PHONE),
        ("+44.20.7946.0958", "+442079460958", PHONE),
        ("\uff0b\uff14\uff14 20 7946 0958", "+442079460958", PHONE),  # fullwidth +44
        ("  Stra\u00dfe ", "STRASSE", Normalization.CASEFOLD),
        ("caf\u0065\u0301", "caf\u00e9", Normalization.EXACT),  # NFD vs NFC
    ],
)
def test_equal_values_index_equally(crypto, a, b, normalization):
    assert _one(crypto, a, normalization) == _one(crypto, b, normalization)


@pytest.mark.parametrize(
    ("a", "b", "normalization"),
    [
        ("Alice", "alice", Normalization.EXACT),
        ("alice@example.com", "alice@example.org", EMAIL),
        ("+442079460958", "+442079460959", PHONE),
    ],
)
def test_different_values_index_differently(crypto, a, b, normalization):
    assert _one(crypto, a, normalization) != _one(crypto, b, normalization)


def test_normalized_forms():
    assert normalize(" Alice@Example.COM ", EMAIL) == "alice@example.com"
    assert normalize("+44 20 7946-0958", PHONE) == "+442079460958"
    assert normalize("0044 (20) 79460958", PHONE) == "+442079460958"


@pytest.mark.parametrize(
    ("value", "normalization"),
    [
        ("not-an-email", EMAIL),
        ("alice@", EMAIL),
        ("@example.com", EMAIL),
        ("a@b@example.com", EMAIL),
        ("alice @example.com", EMAIL),
        ("   ", EMAIL),
        ("", EMAIL),
        ("a" * 250 + "@example.com", EMAIL),
        ("020 7946 0958", PHONE),  # national format, no country code
        ("+44 20", PHONE),  # too short
        ("+0 20 7946 0958", PHONE),  # country code cannot start with 0
        ("+44 20 7946 0958 1234 5678", PHONE),  # too long
        ("+44 20 CALL ME", PHONE),
        ("", PHONE),
        ("   ", Normalization.CASEFOLD),
        ("", Normalization.EXACT),
        ("x" * (MAX_VALUE_CHARS + 1), Normalization.EXACT),
    ],
)
def test_invalid_values_are_refused(crypto, value, normalization):
    with pytest.raises(InvalidValue) as info:
        _token(crypto, value, normalization)
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code == "invalid_value"
    assert info.value.message.startswith("item 0: ")
    if value.strip():
        assert value.strip() not in str(info.value)
    assert crypto.outcome("blind_index", "invalid_value") == 1
    assert crypto.outcome("blind_index", "ok") == 0


def test_invalid_value_error_names_the_item_and_not_the_value(crypto):
    requests = [
        IndexRequest("alice@example.com", EMAIL, CTX),
        IndexRequest("+442079460958", PHONE, CTX),
        IndexRequest("secret-not-an-email", EMAIL, CTX),
    ]
    with pytest.raises(InvalidValue) as info:
        crypto.service.blind_index(requests, all_versions=False)
    assert info.value.message == "item 2: not an email address"
    assert "secret-not-an-email" not in repr(info.value)


# -- context --------------------------------------------------------------------------------------


def test_context_separates_domains(crypto):
    value = "alice@example.com"
    tokens = {
        _one(crypto, value, EMAIL, ctx).token
        for ctx in (b"ws_1/visitors.email", b"ws_2/visitors.email", b"ws_1/operators.email")
    }
    assert len(tokens) == 3


def test_context_and_value_boundary_is_unambiguous(crypto):
    exact = Normalization.EXACT
    assert _one(crypto, "bc", exact, b"a") != _one(crypto, "c", exact, b"ab")


def test_missing_context_is_refused(crypto):
    requests = [IndexRequest("alice@example.com", EMAIL, CTX), IndexRequest("a@b.c", EMAIL, b"")]
    with pytest.raises(MissingAssociatedData) as info:
        crypto.service.blind_index(requests, all_versions=False)
    assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.code == "missing_associated_data"
    assert info.value.message.startswith("item 1: ")


def test_batch_limit(make_crypto):
    crypto = make_crypto(max_items=3)
    ok = crypto.service.blind_index(
        [IndexRequest(f"u{i}@example.com", EMAIL, CTX) for i in range(3)], all_versions=False
    )
    assert len(ok) == 3
    with pytest.raises(BatchTooLarge) as info:
        crypto.service.blind_index(
            [IndexRequest(f"u{i}@example.com", EMAIL, CTX) for i in range(4)], all_versions=False
        )
    assert info.value.status == grpc.StatusCode.OUT_OF_RANGE
    assert info.value.code == "batch_too_large"
    assert crypto.outcome("blind_index", "batch_too_large") == 1


def test_results_follow_request_order(crypto):
    values = [f"user{i}@example.com" for i in range(5)]
    results = crypto.service.blind_index(
        [IndexRequest(v, EMAIL, CTX) for v in values], all_versions=False
    )
    assert [r[0].token for r in results] == [_one(crypto, v).token for v in values]
    assert crypto.outcome("blind_index", "ok") == 10


# -- versions and rotation ------------------------------------------------------------------------


def test_all_versions_before_any_rotation(crypto):
    tokens = _token(crypto, "alice@example.com", all_versions=True)
    assert [t.key_version for t in tokens] == [1]
    assert tokens[0] == _one(crypto, "alice@example.com")


def test_index_rotation_keeps_old_tokens_findable(crypto):
    old = _one(crypto, "alice@example.com")
    crypto.rotate_index()
    crypto.rotate_index()
    new = _one(crypto, " ALICE@example.com")
    assert new.key_version == 3
    assert TOKEN.fullmatch(new.token).group(1) == "3"
    assert new.token != old.token

    every = _token(crypto, "alice@example.com", all_versions=True)
    assert [t.key_version for t in every] == [3, 2, 1]  # primary first
    assert every[0] == new
    assert old in every
    assert len({t.token for t in every}) == 3
    for t in every:
        assert TOKEN.fullmatch(t.token).group(1) == str(t.key_version)


def test_retired_index_versions_are_not_offered(crypto):
    old = _one(crypto, "alice@example.com")
    crypto.rotate_index()
    crypto.retire_index_below(2)
    every = _token(crypto, "alice@example.com", all_versions=True)
    assert [t.key_version for t in every] == [2]
    assert old not in every


def test_data_key_rotation_does_not_change_index_tokens(crypto):
    before = _one(crypto, "alice@example.com")
    crypto.rotate_data()
    assert _one(crypto, "alice@example.com") == before
