"""What a client is, from its User-Agent: browser, operating system and kind of device.

The one parser of User-Agents in Palisade: client_text.describe_device (the one-line
description sessions and API-key histories show) and the security log's structured device
are both made from parse_device. Every part is one clean line, bounded, so a client cannot forge
log lines or blow up a column through its User-Agent header.
"""

from __future__ import annotations

import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

from ua_parser import parse

# The longest User-Agent looked at: the rest is cut before parsing or storing.
MAX_USER_AGENT = 512
# Parsers copy names and versions out of the header unbounded ("Chrome/999...9"): each part
# is cut so a description fits a device column (128 characters) with room for " on ".
MAX_FAMILY = 48
MAX_VERSION = 12
_ELLIPSIS = "…"
# Dropped before parsing or storing: parsers copy UA text into the names they return, and
# these would let a client forge lines, bidi-spoof a name, or break UTF-8 encoding.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"})

UNKNOWN_DEVICE = "Unknown device"  # no User-Agent at all
UNKNOWN_CLIENT = "Unknown client"  # a header was sent, but nothing readable in it

KINDS = ("desktop", "mobile", "tablet", "bot", "other")
_MOBILE_OS = frozenset({"iOS", "Android", "Windows Phone", "BlackBerry OS", "KaiOS", "Tizen"})
_DESKTOP_OS = frozenset(
    {
        "Windows",
        "Mac OS X",
        "macOS",
        "Linux",
        "Ubuntu",
        "Debian",
        "Fedora",
        "Chrome OS",
        "ChromeOS",
        "FreeBSD",
        "OpenBSD",
        "NetBSD",
    }
)


def clip(text: str, limit: int) -> str:
    """text, or its first limit-1 characters and an ellipsis; NUL (refused by Postgres) dropped."""
    text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def printable(text: str) -> str:
    """text without controls, bidi overrides, surrogates, line separators or unassigned code
    points: one line of visible text."""
    if text.isascii() and text.isprintable():
        return text  # the usual case, checked in C: no ASCII printable is in those categories
    return "".join(c for c in text if unicodedata.category(c) not in _UNPRINTABLE)


def clean_user_agent(agent: str | None) -> str:
    """The part of a User-Agent Palisade looks at and keeps: at most MAX_USER_AGENT characters
    of one printable line ("" for none)."""
    if not agent:
        return ""
    return printable(agent[:MAX_USER_AGENT]).strip()


@dataclass(frozen=True)
class Device:
    """browser: e.g. "Chrome 120"; os: e.g. "Mac OS X" ("" unknown); kind: one of KINDS."""

    browser: str
    os: str
    kind: str

    def describe(self, max_chars: int) -> str:
        """One line such as "Chrome 120 on Mac OS X", at most max_chars characters."""
        name = f"{self.browser} on {self.os}" if self.os else self.browser
        return clip(name.strip(), max_chars)

    @classmethod
    def from_description(cls, description: str) -> Device:
        """The device behind a description describe() made ("Chrome 120 on Mac OS X"), for
        records that kept only the description (services' outboxes): the kind is only as good
        as the operating system's name tells."""
        text = printable(description).strip()
        browser, on, os_name = text.rpartition(" on ")
        if not on:
            browser, os_name = text, ""
        return cls(browser=browser.strip(), os=os_name.strip(), kind=_kind("", "", os_name, text))


def _kind(device_family: str, device_brand: str, os_family: str, agent: str) -> str:
    if device_family == "Spider" or device_brand == "Spider":
        return "bot"
    if "iPad" in device_family or "Tablet" in device_brand or "Tablet" in device_family:
        return "tablet"
    if os_family == "Android" and "Mobile" not in agent:
        return "tablet"  # Android phones say "Mobile"; tablets do not
    if os_family in _MOBILE_OS or "Mobile" in agent:
        return "mobile"
    if os_family in _DESKTOP_OS:
        return "desktop"
    return "other"


def parse_device(agent: str | None) -> Device:
    """The device behind a User-Agent; unknown parts are "Unknown device"/"Unknown client"."""
    cleaned = clean_user_agent(agent)
    if not cleaned:
        name = UNKNOWN_DEVICE if not agent else UNKNOWN_CLIENT
        return Device(browser=name, os="", kind="other")
    result = parse(cleaned)
    ua = result.user_agent
    family = clip(ua.family, MAX_FAMILY) if ua else UNKNOWN_CLIENT
    browser = f"{family} {clip(ua.major, MAX_VERSION)}" if ua and ua.major else family
    os_family = result.os.family if result.os and result.os.family else ""
    os_name = clip(os_family, MAX_FAMILY) if os_family and os_family != "Other" else ""
    device_family = result.device.family if result.device else ""
    device_brand = (result.device.brand or "") if result.device else ""
    return Device(
        browser=printable(browser).strip() or UNKNOWN_CLIENT,
        os=printable(os_name).strip(),
        kind=_kind(device_family, device_brand, os_family, cleaned),
    )


class DeviceParser:
    """parse_device with a bounded cache (least recently used dropped): a client sends the same
    User-Agent with every request, and the regular expressions behind a parse cost far more
    than a lookup. One per consumer (the security log's ingest), not a process global."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._cache: OrderedDict[str, Device] = OrderedDict()

    def parse(self, agent: str | None) -> Device:
        if not agent:
            return parse_device(agent)
        key = agent[:MAX_USER_AGENT]
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        device = parse_device(key)
        self._cache[key] = device
        if len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return device
