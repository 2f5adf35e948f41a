"""palisade.common.client_text: client-supplied text bounded and cleaned for storage and logs.

describe_device is a short, human description of a client's User-Agent (SECURITY.md 28, 37);
clip, printable and client_ip bound the other free-text columns of auth and apikeys.
"""

from __future__ import annotations

import random
import unicodedata

import pytest

from palisade.common import client_text, devices
from palisade.common.client_text import clip, clip_optional, printable

DEVICE_CHARS = 128  # sessions.device (auth), key_events.device (apikeys)
IP_CHARS = 64

FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
EDGE_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
CHROME_ANDROID = (
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)

_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def describe_device(user_agent: str | None) -> str:
    return client_text.describe_device(user_agent, DEVICE_CHARS)


def _is_clean(text: str) -> bool:
    """One line of visible text: no controls, bidi overrides, surrogates or line separators."""
    text.encode("utf-8")  # raises on lone surrogates
    return all(unicodedata.category(c) not in _UNSAFE_CATEGORIES for c in text)


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        (FIREFOX_LINUX, "Firefox 120 on Linux"),
        (CHROME_MAC, "Chrome 120 on Mac OS X"),
        (EDGE_WINDOWS, "Edge 120 on Windows"),
        (SAFARI_IPHONE, "Mobile Safari 17 on iOS"),
        (CHROME_ANDROID, "Chrome Mobile 120 on Android"),
        ("curl/8.4.0", "curl 8"),
    ],
)
def test_known_clients(user_agent, expected) -> None:
    assert describe_device(user_agent) == expected


@pytest.mark.parametrize("user_agent", [None, ""])
def test_missing_user_agent(user_agent) -> None:
    assert describe_device(user_agent) == "Unknown device"


@pytest.mark.parametrize("user_agent", ["x", "not a browser", "-", " ", "\x00"])
def test_unrecognised_clients_get_a_generic_name(user_agent) -> None:
    assert describe_device(user_agent) == "Unknown client"


def test_huge_user_agents_are_cut_before_parsing(monkeypatch) -> None:
    parsed: list[int] = []
    real_parse = devices.parse

    def spy(text):
        parsed.append(len(text))
        return real_parse(text)

    monkeypatch.setattr(devices, "parse", spy)  # the one parser behind describe_device
    for huge in ["A" * 10_000_000, "(" * 1_000_000, FIREFOX_LINUX + " " + "x" * 1_000_000]:
        result = describe_device(huge)
        assert isinstance(result, str)
        assert 0 < len(result) <= 512
    assert parsed
    assert max(parsed) <= 512  # the parser never sees more than the first 512 characters


def test_a_known_prefix_before_padding_is_still_recognised() -> None:
    assert describe_device(FIREFOX_LINUX + " " + "x" * 1_000_000) == "Firefox 120 on Linux"


def test_binary_garbage_never_crashes() -> None:
    rng = random.Random(1234)
    for _ in range(100):
        size = rng.choice([1, 10, 100, 511, 512, 513, 5000])
        garbage = rng.randbytes(size).decode("latin-1")
        result = describe_device(garbage)
        assert isinstance(result, str)
        assert 0 < len(result) <= 512


def test_invalid_unicode_never_crashes() -> None:
    for garbage in ["\ud800" * 600, "\udfff\x00\uffff", "\U0010ffff" * 300, "\u202e" * 1000]:
        assert isinstance(describe_device(garbage), str)


@pytest.mark.parametrize(
    "user_agent",
    [
        "evil\nbot/1.0",
        "Mozilla/5.0 (compatible; evil\r\nbot/1.0)",
        "A\u202e\u202e\x1bev\u202eil\u202ebot/\x1b1.0",
        "A\u202e\x00evil\ud800bot\n/1\ud800.\n0",
        "evil\x1b[2Jbot/1.0",
        "evil\u2028bot/1.0",
    ],
    ids=["lf", "crlf", "bidi-override", "lone-surrogate", "ansi-escape", "line-sep"],
)
def test_description_is_one_clean_line_whatever_the_user_agent(user_agent) -> None:
    # The description is stored, listed to users and written to the audit trail.
    assert _is_clean(describe_device(user_agent))


def test_description_of_random_garbage_is_clean() -> None:
    rng = random.Random(99)
    nasty = ["\n", "\r", "\x00", "\x1b", "\u202e", "\u2028", "\x85"]
    dirty = []
    for _ in range(150):
        chars = list(rng.choice([FIREFOX_LINUX, CHROME_MAC, "Evilbot/1.0", "curl/8.4.0"]))
        for _ in range(5):
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(nasty))
        result = describe_device("".join(chars))
        if not _is_clean(result):
            dirty.append(result)
    assert dirty == []


@pytest.mark.parametrize(
    "user_agent",
    [
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 Chrome/" + "9" * 400 + ".0 Safari/537.36",
        "Mozilla/5.0 (X11; Linux x86_64) " + "B" * 300 + "Bot/" + "1" * 300,
        "Mozilla/5.0 (" + "Q" * 500 + "; rv:120.0) Gecko/20100101 Firefox/120.0",
    ],
)
def test_descriptions_fit_the_device_column(user_agent) -> None:
    # sessions.device is VARCHAR(128); ua_parser copies versions and names unbounded.
    description = describe_device(user_agent)
    assert 0 < len(description) <= 128
    assert _is_clean(description)


def test_a_description_fits_the_width_asked_for() -> None:
    assert client_text.describe_device(FIREFOX_LINUX, 10) == "Firefox 1…"
    assert client_text.describe_device(FIREFOX_LINUX, 200) == "Firefox 120 on Linux"


def test_clip_bounds_by_characters_and_drops_nul() -> None:
    assert clip("short", 10) == "short"
    assert clip("x" * 11, 10) == "x" * 9 + "…"
    assert len(clip("é" * 500, 128)) == 128
    assert clip("a\x00b", 10) == "ab"  # Postgres refuses NUL in text
    assert clip("\x00" * 20 + "abc", 5) == "abc"  # dropped before counting
    assert clip_optional(None, 10) is None
    assert clip_optional("a\x00" * 10, 5) == "aaaa…"


def test_printable_keeps_one_line_of_visible_text() -> None:
    assert printable("https://x\r\n\u202eevil\x00\ud800\u2028") == "https://xevil"
    assert printable("Grüße, 東京") == "Grüße, 東京"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("fe80::1%" + "z" * 60, "fe80::1"),  # a zone id too long for the column is dropped
        ("not an ip", None),
        ("192.0.2.256", None),
        ("", None),
        (None, None),
        ("1" * 1000, None),
    ],
)
def test_client_ip_is_canonical_and_fits_its_column(value, expected) -> None:
    assert client_text.client_ip(value, IP_CHARS) == expected


def test_client_ip_refuses_what_cannot_fit_the_width_asked_for() -> None:
    assert client_text.client_ip("192.0.2.1", 8) is None
    assert client_text.client_ip("192.0.2.1", 9) == "192.0.2.1"


@pytest.mark.parametrize(
    "value",
    ["1.2.3.4", "255.255.255.255", "0.0.0.0", "01.2.3.4", "256.1.1.1", "1.2.3", "10.0.0.010"],
)
def test_the_ipv4_fast_path_agrees_with_ipaddress(value: str) -> None:
    import ipaddress

    try:
        expected: str | None = str(ipaddress.ip_address(value))
    except ValueError:
        expected = None
    assert client_text.client_ip(value, IP_CHARS) == expected
