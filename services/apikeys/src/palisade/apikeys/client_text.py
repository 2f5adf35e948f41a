"""Client-supplied text (IPs, User-Agents, leak sources) made safe to store and to log.

Postgres refuses a value longer than its VARCHAR (SQLite does not), and CR/LF or other
control characters in stored text would let a client forge lines in logs and emails: every
writer of a free-text column goes through here. The device description follows auth's
(palisade.auth.devices), so both services describe one browser alike.
"""

from __future__ import annotations

import ipaddress
import unicodedata

from ua_parser import parse

from palisade.apikeys.tables import DEVICE_CHARS, IP_CHARS, SOURCE_CHARS

_ELLIPSIS = "…"
_MAX_USER_AGENT = 512
_MAX_FAMILY = 48
_MAX_VERSION = 12
# Dropped before parsing or storing: line breaks, bidi overrides, unpaired surrogates, ...
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn"})


def clip(text: str, limit: int) -> str:
    """text, or its first limit-1 characters and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def printable(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in _UNPRINTABLE)


def client_ip(value: str | None) -> str | None:
    """The canonical text of an IP address (a zone id dropped if too long), or None."""
    if not value or len(value) > 4 * IP_CHARS:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    text = str(address)
    if len(text) > IP_CHARS and isinstance(address, ipaddress.IPv6Address):
        text = str(ipaddress.IPv6Address(int(address)))
    return text if len(text) <= IP_CHARS else None


def leak_source(source: str) -> str | None:
    """Where a reporter found a key, printable and bounded (None if nothing is left)."""
    cleaned = printable(source).strip()
    return clip(cleaned, SOURCE_CHARS) if cleaned else None


def user_agent(value: str | None) -> str | None:
    """The User-Agent as auth's notice may show it: printable, bounded."""
    if not value:
        return None
    return clip(printable(value[:_MAX_USER_AGENT]).strip(), _MAX_USER_AGENT) or None


def describe_device(agent: str | None) -> str:
    """A short description of a client, e.g. "Chrome 120 on Mac OS X"."""
    if not agent:
        return "Unknown device"
    cleaned = printable(agent[:_MAX_USER_AGENT]).strip()
    if not cleaned:
        return "Unknown client"
    result = parse(cleaned)
    ua = result.user_agent
    family = clip(ua.family, _MAX_FAMILY) if ua else "Unknown client"
    name = f"{family} {clip(ua.major, _MAX_VERSION)}" if ua and ua.major else family
    if result.os and result.os.family and result.os.family != "Other":
        name = f"{name} on {clip(result.os.family, _MAX_FAMILY)}"
    return clip(name.strip(), DEVICE_CHARS)
