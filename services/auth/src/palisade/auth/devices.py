"""A short human description of a client from its User-Agent, e.g. "Chrome 120 on Mac OS X"."""

from __future__ import annotations

import unicodedata

from ua_parser import parse

from palisade.auth.bounded import DEVICE_CHARS, clip

_MAX_USER_AGENT = 512
# Parsers copy names and versions out of the header unbounded ("Chrome/999...9"): each part
# is cut so the description fits sessions.device, VARCHAR(128), with room for " on ".
_MAX_FAMILY = 48
_MAX_VERSION = 12
# Dropped from the User-Agent before parsing: parsers copy UA text into the names they return,
# and these would let a client forge lines, bidi-spoof the name, or break UTF-8 encoding.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"})


def _printable(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in _UNPRINTABLE)


def describe_device(user_agent: str | None) -> str:
    if not user_agent:
        return "Unknown device"
    cleaned = _printable(user_agent[:_MAX_USER_AGENT]).strip()
    if not cleaned:
        return "Unknown client"  # a header was sent, but nothing readable in it
    result = parse(cleaned)
    agent = result.user_agent
    family = clip(agent.family, _MAX_FAMILY) if agent else "Unknown client"
    name = f"{family} {clip(agent.major, _MAX_VERSION)}" if agent and agent.major else family
    if result.os and result.os.family and result.os.family != "Other":
        name = f"{name} on {clip(result.os.family, _MAX_FAMILY)}"
    return clip(name.strip(), DEVICE_CHARS)
