"""The browser pages behind the links in Palisade's emails, served by the gateway itself.

Each GET shows a constant confirm page and consumes nothing; only the page's own POST to the
JSON route uses the link's token (see common.py for the rules every page follows).
"""

from __future__ import annotations

from palisade.gateway.link_pages import invitation, magic_link, not_me, reset_password, verify_email
from palisade.gateway.link_pages.common import LinkPage

PAGES: tuple[LinkPage, ...] = (
    magic_link.PAGE,
    verify_email.PAGE,
    reset_password.PAGE,
    invitation.PAGE,
    not_me.PAGE,
)

__all__ = ["PAGES", "LinkPage"]
