"""palisade.common.devices: the structured device (browser, OS, kind) behind a User-Agent.

The security log stores it; describe_device (tested in test_client_text.py) is made from it.
"""

from __future__ import annotations

import pytest

from palisade.common import devices
from palisade.common.devices import KINDS, Device, DeviceParser, clean_user_agent, parse_device

CHROME_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)
SAFARI_IPAD = (
    "Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)
CHROME_ANDROID_PHONE = (
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Mobile Safari/537.36"
)
CHROME_ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0 Safari/537.36"
)
GOOGLEBOT = "Googlebot/2.1 (+http://www.google.com/bot.html)"


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (CHROME_MAC, Device("Chrome 120", "Mac OS X", "desktop")),
        (SAFARI_IPHONE, Device("Mobile Safari 17", "iOS", "mobile")),
        (SAFARI_IPAD, Device("Mobile Safari 17", "iOS", "tablet")),
        (CHROME_ANDROID_PHONE, Device("Chrome Mobile 120", "Android", "mobile")),
        (CHROME_ANDROID_TABLET, Device("Chrome 120", "Android", "tablet")),
        (GOOGLEBOT, Device("Googlebot 2", "", "bot")),
        ("curl/8.4.0", Device("curl 8", "", "other")),
        (None, Device("Unknown device", "", "other")),
        ("\x00\u202e", Device("Unknown client", "", "other")),
    ],
)
def test_devices(agent, expected) -> None:
    assert parse_device(agent) == expected


def test_every_part_is_one_bounded_printable_line() -> None:
    hostile = "Mozilla/5.0 (\r\nX-Forged: 1\u202e; " + "Q" * 5000 + ") Firefox/" + "9" * 500
    device = parse_device(hostile)
    assert device.kind in KINDS
    for part in (device.browser, device.os):
        assert "\n" not in part
        assert "\r" not in part
        assert "\u202e" not in part
        assert len(part) <= 48 + 1 + 12
    assert len(device.describe(128)) <= 128


def test_clean_user_agent_bounds_and_strips() -> None:
    assert clean_user_agent(None) == ""
    assert clean_user_agent(" a\r\nb ") == "ab"
    assert len(clean_user_agent("x" * 10_000)) == 512


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("Firefox 120 on Linux", Device("Firefox 120", "Linux", "desktop")),
        ("Mobile Safari 17 on iOS", Device("Mobile Safari 17", "iOS", "mobile")),
        ("Chrome Mobile 120 on Android", Device("Chrome Mobile 120", "Android", "mobile")),
        ("curl 8", Device("curl 8", "", "other")),
        ("Unknown device", Device("Unknown device", "", "other")),
    ],
)
def test_devices_from_their_description(description, expected) -> None:
    assert Device.from_description(description) == expected
    assert Device.from_description(expected.describe(128)) == expected


def test_the_cached_parser_answers_alike_and_stays_bounded(monkeypatch) -> None:
    parser = DeviceParser(max_entries=2)
    calls: list[str] = []
    real = devices.parse_device

    def counting(agent):
        calls.append(agent)
        return real(agent)

    monkeypatch.setattr(devices, "parse_device", counting)
    for _ in range(3):
        assert parser.parse(CHROME_MAC) == real(CHROME_MAC)
    assert calls == [CHROME_MAC]
    parser.parse(SAFARI_IPHONE)
    parser.parse(GOOGLEBOT)  # the least recently used (Chrome) goes
    parser.parse(CHROME_MAC)
    assert calls == [CHROME_MAC, SAFARI_IPHONE, GOOGLEBOT, CHROME_MAC]
    assert parser.parse(None) == real(None)
