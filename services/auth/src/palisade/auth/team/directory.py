"""A workspace's members, newest first, a page at a time (`GET /v1/team/members`).

Names and emails are sealed in the database: a page costs one membership check, one SELECT
and one Decrypt call for the whole page (never one per member). Pages are keyed by
(joined_at, user_id), so members who join meanwhile never shift later pages; the token is
opaque to clients and only positions the cursor inside the caller's own workspace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, or_, select

from palisade.auth.accounts.principals import NotAMember, WorkspaceReader
from palisade.auth.store import AuthStore, memberships, users
from palisade.auth.team.paging import (
    InvalidPageSize,
    InvalidPageToken,
    decode_cursor,
    encode_cursor,
)
from palisade.auth.team.paging import page_size as clamp_page_size
from palisade.common.aad import associated_data
from palisade.common.crypto_client import CryptoClient

__all__ = [
    "InvalidPageSize",
    "InvalidPageToken",
    "Member",
    "TeamDirectory",
    "decode_page_token",
    "encode_page_token",
]
# A user id as auth mints them (a page token's position).
USER_ID = re.compile(r"usr_[0-9a-f]{32}")


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
    return encode_cursor(joined_at, user_id)


def decode_page_token(token: str) -> tuple[datetime, str]:
    return decode_cursor(token, USER_ID)


class TeamDirectory:
    def __init__(self, *, store: AuthStore, crypto: CryptoClient) -> None:
        self._store = store
        self._crypto = crypto

    async def members(
        self, reader: WorkspaceReader, *, page_size: int, page_token: str
    ) -> tuple[list[Member], str]:
        """A page of the reader's workspace and the next page's token ("" on the last)."""
        size = clamp_page_size(page_size)
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
