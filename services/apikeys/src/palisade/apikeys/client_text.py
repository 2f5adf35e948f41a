"""Client-supplied text (IPs, User-Agents, leak sources) made safe to store and to log.

Postgres refuses a value longer than its VARCHAR (SQLite does not), and CR/LF or other
control characters in stored text would let a client forge lines in logs and emails: every
writer of a free-text column goes through here. The helpers are palisade.common.client_text
(shared with auth, so both services describe one browser alike), bound to this service's
column widths.
"""

from __future__ import annotations

from palisade.apikeys.tables import DEVICE_CHARS, IP_CHARS, SOURCE_CHARS
from palisade.common import client_text
from palisade.common.client_text import MAX_USER_AGENT, clip, printable

__all__ = ["client_ip", "clip", "describe_device", "leak_source", "printable", "user_agent"]


def client_ip(value: str | None) -> str | None:
    """The canonical text of an IP address (a zone id dropped if too long), or None."""
    return client_text.client_ip(value, IP_CHARS)


def leak_source(source: str) -> str | None:
    """Where a reporter found a key, printable and bounded (None if nothing is left)."""
    cleaned = printable(source).strip()
    return clip(cleaned, SOURCE_CHARS) if cleaned else None


def user_agent(value: str | None) -> str | None:
    """The User-Agent as auth's notice may show it: printable, bounded."""
    if not value:
        return None
    return clip(printable(value[:MAX_USER_AGENT]).strip(), MAX_USER_AGENT) or None


def describe_device(agent: str | None) -> str:
    """A short description of a client, e.g. "Chrome 120 on Mac OS X"."""
    return client_text.describe_device(agent, DEVICE_CHARS)
