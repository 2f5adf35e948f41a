"""Names, emails and phones: what is accepted, what is stored, what is looked up."""

from __future__ import annotations

import pytest

from palisade.visitors.errors import InvalidEmail, InvalidName, InvalidPhone
from palisade.visitors.normalize import (
    clean_email,
    clean_name,
    clean_phone,
    email_lookup,
    stored_email_lookup,
)
from palisade.visitors.service import is_visitor_id, new_visitor_id


def test_final_sigma_capital_sigma_and_sigma_are_one_letter() -> None:
    forms = ["ΣΟΦΊΑΣ@example.gr", "σοφίας@example.gr", "σοφίασ@EXAMPLE.GR", " Σοφίας@example.gr "]
    assert {email_lookup(f) for f in forms} == {"σοφίασ@example.gr"}
    # lower() keeps a final sigma apart from a sigma: the bug case folding avoids.
    assert "σοφίασ".lower() != "σοφίας".lower()


@pytest.mark.parametrize(
    ("given", "lookup"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("STRASSE@example.de", "strasse@example.de"),
        ("straße@example.de", "strasse@example.de"),
        ("ｊｏｅ@ｅｘａｍｐｌｅ.com", "joe@example.com"),
        ("名前@例え.jp", "名前@例え.jp"),
        ("ﬁ@example.com", "fi@example.com"),  # a ligature (NFKC)
    ],
)
def test_email_lookup_forms(given: str, lookup: str) -> None:
    stored, found = clean_email(given)
    assert stored == given.strip()
    assert found == lookup


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " ",
        "plain",
        "@example.com",
        "ada@",
        "ada@example",
        "ada@-example.com",
        "ada@example-.com",
        "ada@exa_mple.com",
        "ada@@example.com",
        "a d@example.com",
        "ada@example.com\x00",
        "ada\u2028@example.com",
        "ada\ud800@example.com",  # a lone surrogate: not UTF-8
        ".ada@example.com",
        "x" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
    ],
)
def test_bad_emails(bad: str) -> None:
    with pytest.raises(InvalidEmail):
        clean_email(bad)


@pytest.mark.parametrize(
    ("given", "e164"),
    [
        ("+49 151 12345678", "+4915112345678"),
        ("0049-151-123.456.78", "+4915112345678"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("＋４９１５１１２３４５６７８", "+4915112345678"),  # full-width (NFKC)
        ("+12345678", "+12345678"),  # 8 digits
        ("+123456789012345", "+123456789012345"),  # 15 digits
    ],
)
def test_phones(given: str, e164: str) -> None:
    assert clean_phone(given) == e164


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "+",
        "+1234567",
        "+1234567890123456",
        "+0123456789",
        "015112345678",
        "+49 151 ABC",
        "+49/151/12345678",
        "+49\n15112345678",
        "+٤٩١٥١١٢٣٤٥٦٧٨",
        "1" * 41,
    ],
)
def test_bad_phones(bad: str) -> None:
    with pytest.raises(InvalidPhone):
        clean_phone(bad)


@pytest.mark.parametrize("bad", ["", "   ", "x" * 201, "Ada\x00", "Ada\x1b[31m", "\ud800"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(InvalidName):
        clean_name(bad)


def test_names_are_trimmed_and_may_be_any_script() -> None:
    assert clean_name("  Þórunn Ασπασία 名前 ") == "Þórunn Ασπασία 名前"
    assert clean_name("x" * 200) == "x" * 200


def test_visitor_ids() -> None:
    made = new_visitor_id()
    assert is_visitor_id(made)
    assert len(made) == 36
    assert new_visitor_id() != made
    for bad in ("", "vis_", "vis_" + "A" * 32, "vis_" + "0" * 31, "usr_" + "0" * 32, made + "0"):
        assert not is_visitor_id(bad)


# Every Unicode Cf character an email, a phone or their lookup may not hold; names refuse the
# ones that hide or reorder text and keep ZWNJ / ZWJ.
_HIDING = [
    "\u200b",  # zero-width space
    "\u00ad",  # soft hyphen
    "\ufeff",  # byte-order mark
    "\u202e",  # right-to-left override
    "\u202a",  # left-to-right embedding
    "\u2066",  # left-to-right isolate
    "\u2069",  # pop directional isolate
    "\u200e",  # left-to-right mark
    "\u200f",  # right-to-left mark
    "\u061c",  # Arabic letter mark
    "\u2060",  # word joiner
    "\u2064",  # invisible plus
]


@pytest.mark.parametrize("hidden", [*_HIDING, "\u200c", "\u200d", "\U000e0041"])
def test_emails_phones_and_their_lookups_refuse_every_format_character(hidden: str) -> None:
    with pytest.raises(InvalidEmail):
        clean_email(f"ada{hidden}@example.com")
    with pytest.raises(InvalidEmail):
        email_lookup(f"ada@exam{hidden}ple.com")
    with pytest.raises(InvalidPhone):
        clean_phone(f"+44 20{hidden}7946 0958")


@pytest.mark.parametrize("hidden", _HIDING)
def test_names_refuse_format_characters_that_hide_or_reorder_text(hidden: str) -> None:
    with pytest.raises(InvalidName):
        clean_name(f"Ada{hidden} Lovelace")


@pytest.mark.parametrize(
    "name",
    [
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian: ZWNJ between letters
        "Ada \U0001f469\u200d\U0001f4bb",  # woman technologist: an emoji ZWJ sequence
    ],
)
def test_names_keep_zwnj_and_zwj(name: str) -> None:
    assert clean_name(name) == name


def test_a_stored_address_with_a_hidden_character_reindexes_as_the_visible_one() -> None:
    assert stored_email_lookup("Ada\u200b@Example.com") == "ada@example.com"
