"""Backup codes: ten single-use CSPRNG codes shown once, then kept only encrypted.

Format `xxxxx-xxxxx` over an alphabet without look-alikes (no 0/o, 1/l/i): 50 bits each,
typed case-insensitively with or without the hyphen.
"""

from __future__ import annotations

import secrets

COUNT = 10
_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"  # 31 symbols: no 0, 1, i, l, o
_GROUP = 5
_LENGTH = 2 * _GROUP


def new_codes(count: int = COUNT) -> list[str]:
    codes: set[str] = set()
    while len(codes) < count:
        raw = "".join(secrets.choice(_ALPHABET) for _ in range(_LENGTH))
        codes.add(f"{raw[:_GROUP]}-{raw[_GROUP:]}")
    return sorted(codes)


def normalize_code(code: str) -> str | None:
    """The canonical `xxxxx-xxxxx` form of what the user typed, or None if it can't be one."""
    compact = "".join(code.split()).replace("-", "").lower()
    if len(compact) != _LENGTH or any(c not in _ALPHABET for c in compact):
        return None
    return f"{compact[:_GROUP]}-{compact[_GROUP:]}"
