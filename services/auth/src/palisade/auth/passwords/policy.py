"""What a new password must be (NIST SP 800-63B / ASVS 6.2): long enough, not common.

No composition rules. Lengths count Unicode code points after NFKC.
"""

from __future__ import annotations

import unicodedata
from functools import cache

from zxcvbn.frequency_lists import FREQUENCY_LISTS

from palisade.auth.errors import PasswordTooCommon, PasswordTooLong, PasswordTooShort

MIN_LENGTH = 8
# Well above the 64 that must be allowed; the bound keeps a 1 MB "password" from being hashed.
MAX_LENGTH = 1024


@cache
def _common_passwords() -> frozenset[str]:
    # zxcvbn's list of the 30,000 most common passwords from breach corpora (offline).
    return frozenset(FREQUENCY_LISTS["passwords"])


# NFKC can expand a character up to 18-fold (U+FDFA) but shrinks text at most about 3-fold,
# so anything longer than this cannot be a valid password, and is refused before NFKC runs.
_MAX_RAW_LENGTH = 4 * MAX_LENGTH


def check_length(password: str) -> str:
    """The NFKC form of password, or the length rule it breaks (also used at login)."""
    if len(password) > _MAX_RAW_LENGTH:
        raise PasswordTooLong(f"password must be at most {MAX_LENGTH} characters")
    normalized = unicodedata.normalize("NFKC", password)
    if len(normalized) > MAX_LENGTH:
        raise PasswordTooLong(f"password must be at most {MAX_LENGTH} characters")
    return normalized


def check_new_password(password: str, *, email: str = "") -> None:
    normalized = check_length(password)
    if len(normalized) < MIN_LENGTH:
        raise PasswordTooShort(f"password must be at least {MIN_LENGTH} characters")
    lowered = normalized.lower()
    if lowered in _common_passwords():
        raise PasswordTooCommon()
    local_part = email.split("@", 1)[0].lower()
    if lowered == email.lower() or (len(local_part) >= 4 and lowered == local_part):
        raise PasswordTooCommon("password must not be your email address")
