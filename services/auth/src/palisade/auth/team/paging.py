"""Page tokens of the team's lists (members, invitations): an opaque cursor that names the
last item a page showed, by (timestamp, id), so items added meanwhile never shift later pages.

A token only positions the cursor inside the caller's own workspace (every query is scoped to
it), so it is not a secret; it is still checked to be one these lists mint: a well-formed
timestamp and an id of the list's own shape (anything else, e.g. a NUL that Postgres refuses
in text, is no position in the list).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime

from palisade.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200  # members: two items each, 400 per Decrypt call, within crypto's 1000
_MAX_TOKEN_LENGTH = 256


class InvalidPageToken(InvalidArgument):
    code = "invalid_page_token"
    default_message = "pageToken is not one this list returned"


class InvalidPageSize(InvalidArgument):
    code = "invalid_page_size"
    default_message = "pageSize must not be negative"


def page_size(requested: int) -> int:
    """The page size to use: 0 means the default, larger than the maximum means the maximum."""
    if requested < 0:
        raise InvalidPageSize()
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_cursor(at: datetime, item_id: str) -> str:
    body = json.dumps({"t": at.astimezone(UTC).isoformat(), "u": item_id})
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_cursor(token: str, id_shape: re.Pattern[str]) -> tuple[datetime, str]:
    if len(token) > _MAX_TOKEN_LENGTH or not token.isascii():
        raise InvalidPageToken()
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        at = datetime.fromisoformat(body["t"])
        item_id = body["u"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidPageToken() from None
    if not isinstance(item_id, str) or not id_shape.fullmatch(item_id) or at.tzinfo is None:
        raise InvalidPageToken()
    return at, item_id
