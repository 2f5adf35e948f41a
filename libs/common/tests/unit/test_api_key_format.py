"""The API key format: every one-character change is refused by the checksum, offline."""

from __future__ import annotations

import random
import re

import pytest

from palisade.common.api_key_format import (
    ALPHABET,
    KEY_LENGTH,
    SCANNER_PATTERN,
    KeyShape,
    MalformedKey,
    checksum,
    display_prefix,
    generate,
    is_well_formed,
    last4,
    lookup_hash,
    shape_of,
)


@pytest.mark.parametrize(
    ("key_type", "mode", "prefix"),
    [
        ("secret", "live", "sk_live_"),
        ("secret", "test", "sk_test_"),
        ("publishable", "live", "pk_live_"),
        ("publishable", "test", "pk_test_"),
    ],
)
def test_generated_keys_have_their_prefix_and_verify(key_type, mode, prefix) -> None:
    key = generate(key_type, mode)
    assert key.startswith(prefix)
    assert len(key) == KEY_LENGTH == 46
    assert shape_of(key) == KeyShape(key_type, mode)
    assert re.fullmatch(SCANNER_PATTERN, key)
    assert display_prefix(key) == key[:12]
    assert last4(key) == key[-4:]
    assert len(lookup_hash(key)) == 32


def test_keys_are_random() -> None:
    keys = {generate("secret", "live") for _ in range(1000)}
    assert len(keys) == 1000


def test_every_one_character_change_is_refused() -> None:
    # Property: for random keys, every substitution at every position, every deletion and
    # every insertion is refused. CRC32 detects every single-symbol error in a message this
    # short, so this must hold for all of them, not most.
    rng = random.Random(1234)
    for _ in range(20):
        key = generate(rng.choice(["secret", "publishable"]), rng.choice(["live", "test"]))
        for position in range(len(key)):
            for char in ALPHABET + "_-":
                if char != key[position]:
                    changed = key[:position] + char + key[position + 1 :]
                    assert not is_well_formed(changed), (position, char)
            assert not is_well_formed(key[:position] + key[position + 1 :])
            assert not is_well_formed(key[:position] + rng.choice(ALPHABET) + key[position:])


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sk_live_",
        "sk_prod_" + "a" * 38,
        "xk_live_" + "a" * 38,
        "SK_LIVE_" + "a" * 38,
        "sk_live_" + "a" * 37,
        "sk_live_" + "a" * 39,
        "sk_live_" + "é" * 38,
        "sk_live_" + "a" * 32 + "!" * 6,
        " sk_live_" + "a" * 38,
    ],
)
def test_malformed_keys_are_refused(bad) -> None:
    with pytest.raises(MalformedKey):
        shape_of(bad)


def test_a_made_up_key_with_a_valid_shape_fails_its_checksum() -> None:
    body = "sk_live_" + "A" * 32
    good = body + checksum(body)
    assert is_well_formed(good)
    assert not is_well_formed(body + ("0" * 6 if checksum(body) != "0" * 6 else "1" * 6))
    # The checksum covers the prefix too: a secret key relabelled publishable is refused.
    assert not is_well_formed("pk" + good[2:])
    assert not is_well_formed(good.replace("_live_", "_test_"))


def test_the_scanner_pattern_finds_keys_in_text() -> None:
    key = generate("secret", "test")
    text = f'config = {{"stripe": "x", "palisade": "{key}"}}\nother_sk_live_short'
    assert re.findall(SCANNER_PATTERN, text) == [key]
