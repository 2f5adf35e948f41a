"""Opaque page tokens: the position (time, id) of the last item a page showed.

Not signed: a token only says where to continue inside lists the caller may read anyway,
and anything that does not decode to a position is refused with invalid_page_token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime

from palisade.apikeys.errors import InvalidPageToken

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
_MAX_TOKEN_CHARS = 200


def page_size(requested: int) -> int:
    if requested <= 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode(moment: datetime, item: str | int) -> str:
    raw = json.dumps([moment.isoformat(), item], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_KEY_ID = re.compile(r"key_[0-9a-f]{32}")


def _decode(token: str) -> tuple[datetime, object]:
    if len(token) > _MAX_TOKEN_CHARS or not token.isascii():
        raise InvalidPageToken()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        moment_text, item = json.loads(raw)
        moment = datetime.fromisoformat(moment_text)
        if moment.tzinfo is None:
            raise InvalidPageToken()
        # astimezone overflows for moments at the calendar's edges ("0001-01-01T00:00+01:00").
        return moment.astimezone(UTC), item
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise InvalidPageToken() from None


def decode_key_position(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    moment, item = _decode(token)
    if not isinstance(item, str) or not _KEY_ID.fullmatch(item):
        raise InvalidPageToken()
    return moment, item


def decode_event_position(token: str) -> tuple[datetime, int] | None:
    if not token:
        return None
    moment, item = _decode(token)
    if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item < 2**63:
        raise InvalidPageToken()  # a bigint column: larger would fail in the database
    return moment, item
