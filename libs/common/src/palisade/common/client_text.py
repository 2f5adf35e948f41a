"""Client-supplied text (IPs, User-Agents, free-text fields) made safe to store and to log.

Postgres refuses a value longer than its VARCHAR (SQLite does not) and any text holding NUL,
and CR/LF or other control characters in stored text would let a client forge lines in logs
and emails: every writer of a free-text column bounds and cleans its value here. The column
widths are the caller's (each service's migrations own them), so they are parameters.
"""

from __future__ import annotations

import ipaddress
import unicodedata

from ua_parser import parse

_ELLIPSIS = "…"
# The longest User-Agent looked at: the rest is cut before parsing or storing.
MAX_USER_AGENT = 512
# Parsers copy names and versions out of the header unbounded ("Chrome/999...9"): each part
# is cut so the description fits a device column (128 characters) with room for " on ".
_MAX_FAMILY = 48
_MAX_VERSION = 12
# Dropped before parsing or storing: parsers copy UA text into the names they return, and
# these would let a client forge lines, bidi-spoof a name, or break UTF-8 encoding.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"})


def clip(text: str, limit: int) -> str:
    """text, or its first limit-1 characters and an ellipsis; NUL (refused by Postgres) dropped."""
    text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def clip_optional(text: str | None, limit: int) -> str | None:
    return None if text is None else clip(text, limit)


def printable(text: str) -> str:
    """text without controls, bidi overrides, surrogates, line separators or unassigned code
    points: one line of visible text."""
    return "".join(c for c in text if unicodedata.category(c) not in _UNPRINTABLE)


def client_ip(value: str | None, max_chars: int) -> str | None:
    """The canonical text of an IP address (a zone id dropped if too long), or None if value is
    not an address or does not fit max_chars."""
    if not value or len(value) > 4 * max_chars:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    text = str(address)
    if len(text) > max_chars and isinstance(address, ipaddress.IPv6Address):
        text = str(ipaddress.IPv6Address(int(address)))  # without the scope id
    return text if len(text) <= max_chars else None


def describe_device(agent: str | None, max_chars: int) -> str:
    """A short human description of a client from its User-Agent, e.g. "Chrome 120 on Mac OS X",
    one clean line of at most max_chars characters."""
    if not agent:
        return "Unknown device"
    cleaned = printable(agent[:MAX_USER_AGENT]).strip()
    if not cleaned:
        return "Unknown client"  # a header was sent, but nothing readable in it
    result = parse(cleaned)
    ua = result.user_agent
    family = clip(ua.family, _MAX_FAMILY) if ua else "Unknown client"
    name = f"{family} {clip(ua.major, _MAX_VERSION)}" if ua and ua.major else family
    if result.os and result.os.family and result.os.family != "Other":
        name = f"{name} on {clip(result.os.family, _MAX_FAMILY)}"
    return clip(name.strip(), max_chars)


def client_bucket(ip: str | None) -> str | None:
    """What a client's counters are keyed by: an IPv4 address, or an IPv6 /64 (one subscriber
    gets a whole /64, so counting per /128 would give an attacker unlimited addresses). An
    IPv4-mapped IPv6 address counts as its IPv4 address; anything else as given."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
    return str(address)
