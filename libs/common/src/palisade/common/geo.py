"""Where an IP address is, when a GeoIP (MaxMind DB) file is configured: the one lookup that
auth's session list and the security log both use.

Nothing here reaches the network: the database is a local file the operator provides
(e.g. GeoLite2-City.mmdb). Without one, NullLocator answers "unknown" for every address.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import maxminddb


@dataclass(frozen=True)
class Location:
    country: str = ""
    city: str = ""

    @property
    def known(self) -> bool:
        return bool(self.country or self.city)

    def describe(self) -> str:
        """ "City, Country", "Country", or "" when unknown."""
        return ", ".join(p for p in (self.city, self.country) if p)


UNKNOWN = Location()


class Locator(Protocol):
    def location(self, ip: str | None) -> Location:
        """The address's country and city in English (parts unknown are empty)."""
        ...

    def locate(self, ip: str | None) -> str:
        """ "City, Country", "Country", or "" when unknown."""
        ...


class NullLocator:
    def location(self, ip: str | None) -> Location:
        return UNKNOWN

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

    def location(self, ip: str | None) -> Location:
        if not ip:
            return UNKNOWN
        try:
            record = self._reader.get(ipaddress.ip_address(ip))
        except ValueError:
            return UNKNOWN
        if not isinstance(record, dict):
            return UNKNOWN
        return Location(country=_english(record, "country"), city=_english(record, "city"))

    def locate(self, ip: str | None) -> str:
        return self.location(ip).describe()
