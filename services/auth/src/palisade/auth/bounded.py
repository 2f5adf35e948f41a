"""Client-supplied text made to fit the VARCHAR(n) columns it is stored in.

Postgres refuses a value longer than its column (SQLite does not), so an unbounded header
would turn every sign-in into a 500 there. Each writer of a free-text column bounds its value
here, by characters as VARCHAR(n) counts them, and the store bounds again before the insert.
The helpers are palisade.common.client_text, bound to auth's column widths.
"""

from __future__ import annotations

from palisade.common import client_text
from palisade.common.client_text import clip, clip_optional

__all__ = ["DEVICE_CHARS", "IP_CHARS", "client_ip", "clip", "clip_optional"]

# Column widths of the auth migrations (sessions.ip / magic_links.requested_ip,
# sessions.device); tests check they match the tables.
IP_CHARS = 64
DEVICE_CHARS = 128


def client_ip(value: str | None) -> str | None:
    """The canonical text of an IP address (a zone id dropped if too long), or None."""
    return client_text.client_ip(value, IP_CHARS)
