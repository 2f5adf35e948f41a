"""Web origins as browsers send them in the Origin header: `scheme://host[:port]`, nothing else.

One rule for every service: the apikeys service stores a publishable key's allowed origins in
this form, and the gateway answers CORS preflights only for an origin of this form (a browser
never sends another; `null`, paths, user info or a default port are not origins a page on a
site has).
"""

from __future__ import annotations

import re

# A host is a lowercase DNS name (LDH labels) or a bracketed IPv6 literal; ports 1-65535.
_ORIGIN = re.compile(
    r"(?P<scheme>https?)://"
    r"(?P<host>(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
    r"|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[1-9][0-9]{0,4}))?"
)
MAX_ORIGIN_CHARS = 300


def is_browser_origin(text: str) -> bool:
    """Whether text is an origin exactly as a browser serializes one (lowercase scheme and
    host, the scheme's default port left out)."""
    if len(text) > MAX_ORIGIN_CHARS or not text.isascii():
        return False
    found = _ORIGIN.fullmatch(text)
    if found is None or len(found.group("host")) > 253:
        return False
    port = found.group("port")
    if port is not None and int(port) > 65535:
        return False
    # Browsers leave a scheme's default port out of Origin.
    return (found.group("scheme"), port) not in (("http", "80"), ("https", "443"))
