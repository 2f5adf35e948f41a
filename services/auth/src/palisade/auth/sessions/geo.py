"""Where a session's IP is, for the session list: palisade.common.geo (shared with the
security log), under the name auth's modules import it by."""

from __future__ import annotations

from palisade.common.geo import Locator, MaxMindLocator, NullLocator

__all__ = ["Locator", "MaxMindLocator", "NullLocator"]
