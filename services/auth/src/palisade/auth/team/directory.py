"""A workspace's members, newest first, a page at a time (`GET /v1/team/members`).

Names and emails are sealed in the database: a page costs one membership check, one SELECT
and one Decrypt call for the whole page (never one per member). Pages are keyed by
(joined_at, user_id), so members who join meanwhile never shift later pages; the token is
opaque to clients and only positions the cursor inside the caller's own workspace.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, bindparam, or_, select

from palisade.auth.accounts.principals import NotAMember, WorkspaceReader
from palisade.auth.store import AuthStore, memberships, users
from palisade.common.aad import associated_data
from palisade.common.crypto_client import CryptoClient
from palisade.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200  # two items each: 400 per Decrypt call, within crypto's 1000
_MAX_TOKEN_LENGTH = 256


class InvalidPageToken(InvalidArgument):
    code = "invalid_page_token"
    default_message = "pageToken is not one this list returned"


class InvalidPageSize(InvalidArgument):
    code = "invalid_page_size"
    default_message = "pageSize must not be negative"


@dataclass(frozen=True)
class Member:
    user_id: str
    name: str
    email: str
    role: str
    joined_at: datetime


_MEMBERSHIP = select(memberships.c.role).where(
    memberships.c.user_id == bindparam("user_id"),
    memberships.c.workspace_id == bindparam("workspace_id"),
)
_PAGE = (
    select(
        memberships.c.user_id,
        memberships.c.role,
        memberships.c.created_at,
        users.c.email_ct,
        users.c.name_ct,
    )
    .join_from(memberships, users, users.c.id == memberships.c.user_id)
    .where(memberships.c.workspace_id == bindparam("workspace_id"))
    .order_by(memberships.c.created_at.desc(), memberships.c.user_id.desc())
    .limit(bindparam("limit"))
)
_PAGE_AFTER = _PAGE.where(
    or_(
        memberships.c.created_at < bindparam("after_at"),
        and_(
            memberships.c.created_at == bindparam("after_at"),
            memberships.c.user_id < bindparam("after_user"),
        ),
    )
)


def _pii_aad(user_id: str, field: str) -> bytes:
    return associated_data("auth", "user", user_id, field)


def encode_page_token(joined_at: datetime, user_id: str) -> str:
    body = json.dumps({"t": joined_at.astimezone(UTC).isoformat(), "u": user_id})
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


_USER_ID = re.compile(r"usr_[0-9a-f]{32}")


def decode_page_token(token: str) -> tuple[datetime, str]:
    if len(token) > _MAX_TOKEN_LENGTH or not token.isascii():
        raise InvalidPageToken()
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        joined_at = datetime.fromisoformat(body["t"])
        user_id = body["u"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidPageToken() from None
    # A user id as auth mints them: anything else (a NUL, refused by Postgres in text) is no
    # position in the list.
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id) or joined_at.tzinfo is None:
        raise InvalidPageToken()
    return joined_at, user_id


class TeamDirectory:
    def __init__(self, *, store: AuthStore, crypto: CryptoClient) -> None:
        self._store = store
        self._crypto = crypto

    async def members(
        self, reader: WorkspaceReader, *, page_size: int, page_token: str
    ) -> tuple[list[Member], str]:
        """A page of the reader's workspace and the next page's token ("" on the last)."""
        if page_size < 0:
            raise InvalidPageSize()
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = decode_page_token(page_token) if page_token else None
        workspace_id = reader.workspace_id
        # Membership again, from the database: an assertion says who the caller was when the
        # gateway looked; a member removed since (or a key's creator) reads nothing more.
        if reader.user_id is not None:
            role = await self._store.reads.one(
                _MEMBERSHIP, {"user_id": reader.user_id, "workspace_id": workspace_id}
            )
            if role is None:
                raise NotAMember()
        params: dict[str, object] = {"workspace_id": workspace_id, "limit": size + 1}
        if after is not None:
            params.update(after_at=after[0], after_user=after[1])
        rows = await self._store.reads.all(_PAGE_AFTER if after else _PAGE, params)
        more = len(rows) > size
        rows = rows[:size]
        if not rows:
            return [], ""
        items: list[tuple[bytes, bytes]] = []
        for user_id, _, _, email_ct, name_ct in rows:
            items.append((bytes(email_ct), _pii_aad(user_id, "email")))
            items.append((bytes(name_ct), _pii_aad(user_id, "name")))
        plain = await self._crypto.decrypt(items)  # the whole page in one call
        page = [
            Member(
                user_id=user_id,
                email=plain[2 * i].decode(),
                name=plain[2 * i + 1].decode(),
                role=role,
                joined_at=joined_at,
            )
            for i, (user_id, role, joined_at, _, _) in enumerate(rows)
        ]
        last = page[-1]
        return page, encode_page_token(last.joined_at, last.user_id) if more else ""
