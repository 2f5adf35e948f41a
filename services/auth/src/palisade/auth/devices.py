"""A short human description of a client from its User-Agent, e.g. "Chrome 120 on Mac OS X"."""

from __future__ import annotations

import unicodedata

from ua_parser import parse

_MAX_USER_AGENT = 512
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
    name = (
        f"{agent.family} {agent.major}".strip()
        if agent and agent.major
        else (agent.family if agent else "Unknown client")
    )
    if result.os and result.os.family and result.os.family != "Other":
        return f"{name} on {result.os.family}"
    return name
