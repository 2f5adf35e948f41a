"""Where a session's IP is, for the session list, when a GeoIP (MaxMind DB) file is configured."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Protocol

import maxminddb


class Locator(Protocol):
    def locate(self, ip: str | None) -> str:
        """ "City, Country", "Country", or "" when unknown."""
        ...


class NullLocator:
    def locate(self, ip: str | None) -> str:
        return ""


def _english(record: Any, key: str) -> str:
    names = (record.get(key) or {}).get("names") or {}
    value = names.get("en", "")
    return value if isinstance(value, str) else ""


class MaxMindLocator:
    """Reads GeoLite2/GeoIP2 City or Country databases (or any MMDB with the same fields)."""

    def __init__(self, path: Path) -> None:
        self._reader = maxminddb.open_database(str(path))

    def close(self) -> None:
        self._reader.close()

    def locate(self, ip: str | None) -> str:
        if not ip:
            return ""
        try:
            record = self._reader.get(ipaddress.ip_address(ip))
        except ValueError:
            return ""
        if not isinstance(record, dict):
            return ""
        parts = [p for p in (_english(record, "city"), _english(record, "country")) if p]
        return ", ".join(parts)
