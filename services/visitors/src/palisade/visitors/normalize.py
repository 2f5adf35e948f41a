"""Validation and normalization of a visitor's name, email and phone.

The stored value is what the visitor gave, trimmed (email) or canonical (phone, E.164); the
lookup value is normalized so that equal addresses index equally: NFKC, then full case folding
(str.casefold, under which capital sigma, final sigma and sigma are one letter, as are sharp s
and "ss"), then NFKC again (folding can leave a non-normalized string). Crypto applies the same
rules again before it indexes (NORMALIZATION_EMAIL / _PHONE), which leaves these values as they
are. Any value with control characters or lone surrogates (which are not UTF-8) is refused.

Invisible format characters (Unicode category Cf) are refused too: an address holding a zero-width
space or a soft hyphen reads like the one without it but indexes apart (the lookup of what anyone
sees on screen misses it), and a bidi override in a name reverses what an agent reads. Emails and
phones refuse every Cf character, and so does their lookup query. Names refuse the ones that hide
or reorder text (bidi controls, zero-width space, word joiner and the invisible operators, BOM,
soft hyphen) but keep ZWNJ and ZWJ, which Persian and Indic names and emoji sequences need.
"""

from __future__ import annotations

import re
import unicodedata

from palisade.visitors.errors import InvalidEmail, InvalidName, InvalidPhone

MAX_NAME_CHARS = 200
MAX_EMAIL_CHARS = 254
MAX_LOCAL_CHARS = 64
MAX_PHONE_INPUT_CHARS = 40

_PHONE_SEPARATORS = re.compile(r"[\s\-.()]")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}", re.ASCII)
# A domain label: letters (any script: internationalized domains), digits, inner hyphens.
_LABEL = re.compile(r"[^\W_](?:(?:[^\W_]|-){0,61}[^\W_])?")
_LOCAL_FORBIDDEN = re.compile(r'[\s@<>()\[\]\\,;:"]')


# Format characters a name may not hold: bidi embeddings, overrides and isolates, the marks
# LRM/RLM/ALM, zero-width space, word joiner and invisible operators (U+2060-2064), the
# deprecated format controls (U+206A-206F), interlinear annotation, BOM and soft hyphen.
_HIDING_IN_NAMES = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
    "\u200b\u2060\u2061\u2062\u2063\u2064\u206a\u206b\u206c\u206d\u206e\u206f"
    "\ufff9\ufffa\ufffb\ufeff\u00ad"
)


def _is_text(value: str, *, names: bool = False) -> bool:
    """No control characters (Cc), lone surrogates, private or unassigned code points, line or
    paragraph separators, nor format characters (Cf): none at all unless `names`, where only
    the ones that hide or reorder text are refused (see the module docstring)."""
    for ch in value:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs", "Co", "Cn") or ch in "\u2028\u2029":
            return False
        if category == "Cf" and (not names or ch in _HIDING_IN_NAMES):
            return False
    return True


def clean_name(raw: str) -> str:
    name = raw.strip()
    if not name or len(name) > MAX_NAME_CHARS or not _is_text(name, names=True):
        raise InvalidName()
    return name


def clean_email(raw: str) -> tuple[str, str]:
    """(the address as given, trimmed; its lookup form)."""
    email = raw.strip()
    if not email or len(email) > MAX_EMAIL_CHARS or not _is_text(email):
        raise InvalidEmail()
    lookup = email_lookup(email)
    return email, lookup


def email_lookup(raw: str) -> str:
    """The normalized form of an address, the one its blind index is made of."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).strip().casefold())
    if not folded or len(folded) > MAX_EMAIL_CHARS or not _is_text(folded):
        raise InvalidEmail()
    local, at, domain = folded.rpartition("@")
    if not at or not local or len(local) > MAX_LOCAL_CHARS or _LOCAL_FORBIDDEN.search(local):
        raise InvalidEmail()
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidEmail()
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise InvalidEmail()
    return folded


def stored_email_lookup(stored: str) -> str:
    """The lookup form of an address already stored, for a reindex: one written before format
    characters were refused is indexed as the address it shows (its Cf characters dropped),
    which is what a lookup now finds."""
    visible = "".join(ch for ch in stored if unicodedata.category(ch) != "Cf")
    return email_lookup(visible)


def clean_phone(raw: str) -> str:
    """The number in E.164: separators dropped, a leading 00 read as +, 8 to 15 digits."""
    if len(raw) > MAX_PHONE_INPUT_CHARS or not _is_text(raw):
        raise InvalidPhone()
    phone = _PHONE_SEPARATORS.sub("", unicodedata.normalize("NFKC", raw))
    if phone.startswith("00"):
        phone = "+" + phone[2:]
    if not _E164.fullmatch(phone):
        raise InvalidPhone()
    return phone
