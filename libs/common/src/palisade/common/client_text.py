"""Client-supplied text (IPs, User-Agents, free-text fields) made safe to store and to log.

Postgres refuses a value longer than its VARCHAR (SQLite does not) and any text holding NUL,
and CR/LF or other control characters in stored text would let a client forge lines in logs
and emails: every writer of a free-text column bounds and cleans its value here. The column
widths are the caller's (each service's migrations own them), so they are parameters.
"""

from __future__ import annotations

import ipaddress
import re

from palisade.common.devices import MAX_USER_AGENT, clip, parse_device, printable

__all__ = [
    "MAX_USER_AGENT",
    "client_bucket",
    "client_ip",
    "clip",
    "clip_optional",
    "describe_device",
    "printable",
]


def clip_optional(text: str | None, limit: int) -> str | None:
    return None if text is None else clip(text, limit)


# Dotted-quad IPv4 without leading zeros: exactly the text ipaddress would give back.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def client_ip(value: str | None, max_chars: int) -> str | None:
    """The canonical text of an IP address (a zone id dropped if too long), or None if value is
    not an address or does not fit max_chars."""
    if not value or len(value) > 4 * max_chars:
        return None
    if _CANONICAL_IPV4.fullmatch(value):
        return value if len(value) <= max_chars else None  # the usual case, already canonical
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
    one clean line of at most max_chars characters (palisade.common.devices parses it)."""
    return parse_device(agent).describe(max_chars)


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
