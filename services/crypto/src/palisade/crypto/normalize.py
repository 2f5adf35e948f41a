"""Normalization of values before blind indexing, so equal values index equally."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from enum import Enum

from palisade.crypto.errors import InvalidValue

MAX_VALUE_CHARS = 1024
_PHONE_SEPARATORS = re.compile(r"[\s\-.()/]")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


class Normalization(Enum):
    EXACT = "exact"
    EMAIL = "email"
    PHONE = "phone"
    CASEFOLD = "casefold"


def _exact(value: str) -> str:
    return unicodedata.normalize("NFC", value)


def _casefold(value: str) -> str:
    return unicodedata.normalize("NFKC", value).strip().casefold()


def _email(value: str) -> str:
    # Full case folding, not lower(): capital sigma, final sigma and sigma, or sharp s and "ss", are
    # one address to a person. NFKC again because folding can leave a non-normalized string.
    # Changing this changes index values: `palisade-auth reindex` moves stored rows forward.
    email = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).strip().casefold())
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise InvalidValue("not an email address")
    return email


def _phone(value: str) -> str:
    phone = _PHONE_SEPARATORS.sub("", unicodedata.normalize("NFKC", value))
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    if not _E164.fullmatch(phone):
        raise InvalidValue("not an international (E.164) phone number")
    return phone


_NORMALIZERS: dict[Normalization, Callable[[str], str]] = {
    Normalization.EXACT: _exact,
    Normalization.EMAIL: _email,
    Normalization.PHONE: _phone,
    Normalization.CASEFOLD: _casefold,
}


def normalize(value: str, kind: Normalization) -> str:
    """The canonical form of value; raises InvalidValue if it has none."""
    if len(value) > MAX_VALUE_CHARS:
        raise InvalidValue("value is too long to index")
    normalized = _NORMALIZERS[kind](value)
    if not normalized:
        raise InvalidValue("value is empty after normalization")
    return normalized
