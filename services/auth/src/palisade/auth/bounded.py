"""Client-supplied text made to fit the VARCHAR(n) columns it is stored in.

Postgres refuses a value longer than its column (SQLite does not), so an unbounded header
would turn every sign-in into a 500 there. Each writer of a free-text column bounds its value
here, by characters as VARCHAR(n) counts them, and the store bounds again before the insert.
"""

from __future__ import annotations

import ipaddress

# Column widths of the auth migrations (sessions.ip / magic_links.requested_ip,
# sessions.device); tests check they match the tables.
IP_CHARS = 64
DEVICE_CHARS = 128
_ELLIPSIS = "…"


def clip(text: str, limit: int) -> str:
    """text, or its first limit-1 characters and an ellipsis; NUL (refused by Postgres) dropped."""
    text = text.replace("\x00", "")
    return text if len(text) <= limit else text[: limit - 1] + _ELLIPSIS


def clip_optional(text: str | None, limit: int) -> str | None:
    return None if text is None else clip(text, limit)


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
        text = str(ipaddress.IPv6Address(int(address)))  # without the scope id
    return text if len(text) <= IP_CHARS else None
