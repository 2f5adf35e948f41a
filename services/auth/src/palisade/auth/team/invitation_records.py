"""The invitations table (migration 0008) and the statements on it.

An invitation is its own single-use token: the row keeps the token's SHA-256 (never the
token), and the single-use core (links/single_use.py) issues and consumes it, its owner being
the invitation row itself (`owner_column="id"`: an invitee may have no account, so there is
no user to own it). `used_at` is the core's consumed-at column: set when the invitation is
accepted, and also when it is revoked or replaced, so a revoked link can never be redeemed;
`revoked_at` tells those apart. The invited address is sealed through crypto (associated
data: the invitation's id) with the blind index users have, so "is this address a member?" and
"does it have a pending invitation here?" are index lookups, never plaintext.

The invitee has no account yet, so the address is sealed under no subject key (auth/subjects.py)
and kept no longer than it can be needed: accepting moves it under the new member's subject
(re-sealed in the accepting transaction, so deleting that account erases it with the rest of
the person's data), and an invitation that expires unaccepted (revoked or replaced ones
included) has its address erased (email_ct and email_index emptied) once it has expired
(team/invitation_expiry.py). Until then the list shows it to the workspace's managers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    and_,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from palisade.auth.links.single_use import Purpose, TokenTable
from palisade.auth.sessions.tokens import TokenKind
from palisade.auth.store import TS, AuthTransaction, metadata
from palisade.common.aad import associated_data

invitations = Table(
    "invitations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("workspace_id", String(40), ForeignKey("workspaces.id"), nullable=False),
    Column("email_index", String(128), nullable=False),
    Column("email_ct", LargeBinary, nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_by", String(40), ForeignKey("users.id"), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("used_at", TS, nullable=True),
    Column("revoked_at", TS, nullable=True),
    Column("accepted_by", String(40), ForeignKey("users.id"), nullable=True),
)
Index("ix_invitations_workspace_created", invitations.c.workspace_id, invitations.c.created_at)
Index("ix_invitations_workspace_email", invitations.c.workspace_id, invitations.c.email_index)

INVITATION = Purpose("invitation", TokenKind.INVITATION)
INVITATION_TABLE = TokenTable(
    invitations,
    consumed_column="used_at",
    purpose_column=None,
    only_purpose=INVITATION.name,
    owner_column="id",
)
INVITATION_ID = re.compile(r"inv_[0-9a-f]{32}")

PENDING, ACCEPTED, REVOKED, EXPIRED = "pending", "accepted", "revoked", "expired"


# What an invitation's address columns hold once it is erased.
ERASED_EMAIL_CT = b""
ERASED_EMAIL_INDEX = ""


def email_aad(invitation_id: str) -> bytes:
    return associated_data("auth", "invitation", invitation_id, "email")


@dataclass(frozen=True)
class InvitationRow:
    id: str
    workspace_id: str
    email_index: str
    email_ct: bytes
    role: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None
    accepted_by: str | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return REVOKED
        if self.used_at is not None:
            return ACCEPTED
        return EXPIRED if now >= self.expires_at else PENDING


_COLUMNS = [invitations.c[name] for name in InvitationRow.__dataclass_fields__]


def _row(row: Sequence[Any]) -> InvitationRow:
    values = list(row)
    values[3] = bytes(values[3])  # a memoryview on Postgres
    return InvitationRow(*values)


def _pending(now: datetime) -> list[ColumnElement[bool]]:
    return [invitations.c.used_at.is_(None), invitations.c.expires_at > now]


class InvitationRecords:
    def __init__(self, tx: AuthTransaction) -> None:
        self._conn = tx.conn

    async def by_id(self, workspace_id: str, invitation_id: str) -> InvitationRow | None:
        row = (
            await self._conn.execute(
                select(*_COLUMNS).where(
                    invitations.c.id == invitation_id, invitations.c.workspace_id == workspace_id
                )
            )
        ).first()
        return None if row is None else _row(row)

    async def by_token_hash(self, token_hash: bytes) -> InvitationRow | None:
        row = (
            await self._conn.execute(
                select(*_COLUMNS).where(invitations.c.token_hash == token_hash)
            )
        ).first()
        return None if row is None else _row(row)

    async def by_owner(self, invitation_id: str) -> InvitationRow | None:
        row = (
            await self._conn.execute(select(*_COLUMNS).where(invitations.c.id == invitation_id))
        ).first()
        return None if row is None else _row(row)

    async def close(self, invitation_ids: Sequence[str], now: datetime) -> list[str]:
        """Revokes those of the invitations still open (not accepted, not revoked); returns
        their ids. One conditional UPDATE, like the core's redemption: an accept and a revoke
        racing on one invitation cannot both win, since both need used_at IS NULL."""
        if not invitation_ids:
            return []
        rows = await self._conn.execute(
            update(invitations)
            .where(invitations.c.id.in_(list(invitation_ids)), invitations.c.used_at.is_(None))
            .values(used_at=now, revoked_at=now)
            .returning(invitations.c.id)
        )
        return [r[0] for r in rows]

    async def pending_for(
        self, workspace_id: str, email_tokens: Sequence[str], now: datetime
    ) -> list[str]:
        """Ids of the workspace's pending invitations of an address (any index version)."""
        rows = await self._conn.execute(
            select(invitations.c.id).where(
                invitations.c.workspace_id == workspace_id,
                invitations.c.email_index.in_(list(email_tokens)),
                *_pending(now),
            )
        )
        return [r[0] for r in rows]

    async def pending_by(
        self, workspace_id: str, created_by: str, now: datetime, *, roles: Sequence[str]
    ) -> list[str]:
        """Ids of the pending invitations a member sent in the workspace, for those roles."""
        rows = await self._conn.execute(
            select(invitations.c.id).where(
                invitations.c.workspace_id == workspace_id,
                invitations.c.created_by == created_by,
                invitations.c.role.in_(list(roles)),
                *_pending(now),
            )
        )
        return [r[0] for r in rows]

    async def mark_accepted(self, invitation_id: str, user_id: str, email_ct: bytes) -> None:
        """Records who accepted; email_ct: the address sealed again under their subject."""
        await self._conn.execute(
            update(invitations)
            .where(invitations.c.id == invitation_id)
            .values(accepted_by=user_id, email_ct=email_ct)
        )

    async def erase_accepted_by(self, user_id: str) -> None:
        """Empties the sealed address of every invitation the user accepted (their account is
        being deleted; one accepted before subject keys holds no subject of theirs)."""
        await self._conn.execute(
            update(invitations)
            .where(invitations.c.accepted_by == user_id)
            .values(email_ct=ERASED_EMAIL_CT, email_index=ERASED_EMAIL_INDEX)
        )

    async def page(
        self, workspace_id: str, *, limit: int, after: tuple[datetime, str] | None
    ) -> list[InvitationRow]:
        """Newest first, keyed by (created_at, id): later pages never shift."""
        query = (
            select(*_COLUMNS)
            .where(invitations.c.workspace_id == workspace_id)
            .order_by(invitations.c.created_at.desc(), invitations.c.id.desc())
            .limit(limit)
        )
        if after is not None:
            at, last_id = after
            query = query.where(
                or_(
                    invitations.c.created_at < at,
                    and_(invitations.c.created_at == at, invitations.c.id < last_id),
                )
            )
        return [_row(r) for r in await self._conn.execute(query)]


async def forget_expired_addresses(conn: AsyncConnection, now: datetime, *, limit: int) -> int:
    """Erases the sealed address (and its index) of up to `limit` invitations that expired
    unaccepted; returns how many. Accepted ones keep theirs (under the member's subject)."""
    expired = (
        select(invitations.c.id)
        .where(
            invitations.c.accepted_by.is_(None),
            invitations.c.expires_at <= now,
            func.length(invitations.c.email_ct) > 0,
        )
        .limit(limit)
    )
    ids = [r[0] for r in await conn.execute(expired)]
    if not ids:
        return 0
    await conn.execute(
        update(invitations)
        .where(invitations.c.id.in_(ids), invitations.c.accepted_by.is_(None))
        .values(email_ct=ERASED_EMAIL_CT, email_index=ERASED_EMAIL_INDEX)
    )
    return len(ids)
