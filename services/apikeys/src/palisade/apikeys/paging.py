"""Opaque page tokens: the position (time, id) of the last item a page showed.

Not signed: a token only says where to continue inside lists the caller may read anyway,
and anything that does not decode to a position is refused with invalid_page_token.
"""

from __future__ import annotations

import base64
import binascii
import json
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


def _decode(token: str) -> tuple[datetime, object]:
    if len(token) > _MAX_TOKEN_CHARS or not token.isascii():
        raise InvalidPageToken()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        moment_text, item = json.loads(raw)
        moment = datetime.fromisoformat(moment_text)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise InvalidPageToken() from None
    if moment.tzinfo is None:
        raise InvalidPageToken()
    return moment.astimezone(UTC), item


def decode_key_position(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    moment, item = _decode(token)
    if not isinstance(item, str) or len(item) > 40:
        raise InvalidPageToken()
    return moment, item


def decode_event_position(token: str) -> tuple[datetime, int] | None:
    if not token:
        return None
    moment, item = _decode(token)
    if not isinstance(item, int) or isinstance(item, bool) or item < 0:
        raise InvalidPageToken()
    return moment, item
