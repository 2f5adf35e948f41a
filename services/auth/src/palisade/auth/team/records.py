"""Memberships and workspaces as the team operations read and change them, inside one
AuthTransaction (the tables are store.py's).

Every change to a workspace's team first locks that workspace's row (SELECT ... FOR NO KEY
UPDATE on Postgres; SQLite's BEGIN IMMEDIATE already serialises every writer), so decisions
that count members, such as "is this the last owner?", are made by one transaction at a time:
two owners demoting each other in parallel cannot both see the other still an owner.

Not FOR UPDATE: that lock also blocks the FOR KEY SHARE every insert of a row referencing the
workspace takes (a session made in it, a membership, an invitation), so a team change would
make every sign-in into the workspace wait for it, and it deadlocked with one that held the
member's rows already (a first address proof holds the user row, their sessions and their
invitations, then signs in; a removal held the workspace, then wanted those sessions). Team
changes still exclude each other, and a switch into the workspace (FOR KEY SHARE) waits for
none of them.

What the stronger lock used to give as well: a session being made in the workspace for the
member a role change or a removal is about waited for it (through its foreign key), so the
change's revocation notice never missed it. The member's user row gives that now: set_role
and delete_membership lock it exclusively before they change the membership, after the
workspace (nothing holding a user row ever waits for a workspace in a mode that conflicts:
only FOR KEY SHARE), and before the member's sessions, in auth's lock order (sessions/store.py).
Every maker of a session holds the user row shared, so one in flight commits first and the
change then sees its session; one that starts later waits, and then finds the change (a switch
reads the membership once it holds the row; a session made anyway in a workspace its user has
left validates as nothing, since validation joins the membership).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update

from palisade.auth.sessions.store import SessionRecords
from palisade.auth.store import AuthTransaction, memberships, users, workspaces
from palisade.auth.team.roles import OWNER


@dataclass(frozen=True)
class MembershipRow:
    workspace_id: str
    user_id: str
    role: str
    joined_at: datetime


@dataclass(frozen=True)
class WorkspaceMembership:
    workspace_id: str
    name: str
    role: str
    joined_at: datetime


@dataclass(frozen=True)
class PersonRow:
    user_id: str
    email_ct: bytes
    name_ct: bytes


class TeamRecords:
    def __init__(self, tx: AuthTransaction) -> None:
        self._tx = tx
        self._conn = tx.conn
        self._locks = tx.locks_rows

    async def lock_workspace(self, workspace_id: str) -> bool:
        """Locks the workspace's row until the transaction ends (FOR NO KEY UPDATE: see the
        module doc); False if there is none."""
        query = select(workspaces.c.id).where(workspaces.c.id == workspace_id)
        if self._locks:
            query = query.with_for_update(key_share=True)
        return (await self._conn.execute(query)).first() is not None

    async def _lock_member(self, user_id: str) -> None:
        """The member's user row, exclusively, before their membership changes (module doc).
        SQLite: BEGIN IMMEDIATE already runs one writer at a time."""
        if self._locks:
            await SessionRecords(self._tx).lock_user(user_id, exclusive=True)

    async def membership(self, workspace_id: str, user_id: str) -> MembershipRow | None:
        row = (
            await self._conn.execute(
                select(memberships.c.role, memberships.c.created_at).where(
                    memberships.c.workspace_id == workspace_id,
                    memberships.c.user_id == user_id,
                )
            )
        ).first()
        return None if row is None else MembershipRow(workspace_id, user_id, row[0], row[1])

    async def owners(self, workspace_id: str) -> int:
        return int(
            (
                await self._conn.execute(
                    select(func.count())
                    .select_from(memberships)
                    .where(memberships.c.workspace_id == workspace_id, memberships.c.role == OWNER)
                )
            ).scalar_one()
        )

    async def set_role(self, workspace_id: str, user_id: str, role: str) -> None:
        """Under the workspace lock; locks the member's user row first (see the module doc)."""
        await self._lock_member(user_id)
        await self._conn.execute(
            update(memberships)
            .where(memberships.c.workspace_id == workspace_id, memberships.c.user_id == user_id)
            .values(role=role)
        )

    async def delete_membership(self, workspace_id: str, user_id: str) -> None:
        """Under the workspace lock; locks the member's user row first (see the module doc), so
        their sessions in the workspace, ended next, include any being made right now."""
        await self._lock_member(user_id)
        await self._conn.execute(
            delete(memberships).where(
                memberships.c.workspace_id == workspace_id, memberships.c.user_id == user_id
            )
        )

    async def add_membership(
        self, workspace_id: str, user_id: str, role: str, now: datetime
    ) -> None:
        await self._conn.execute(
            insert(memberships).values(
                workspace_id=workspace_id, user_id=user_id, role=role, created_at=now
            )
        )

    async def workspaces_of(self, user_id: str) -> list[WorkspaceMembership]:
        """The user's workspaces, in the order they joined them."""
        rows = await self._conn.execute(
            select(
                memberships.c.workspace_id,
                workspaces.c.name,
                memberships.c.role,
                memberships.c.created_at,
            )
            .join_from(memberships, workspaces, workspaces.c.id == memberships.c.workspace_id)
            .where(memberships.c.user_id == user_id)
            .order_by(memberships.c.created_at, memberships.c.workspace_id)
        )
        return [WorkspaceMembership(*row) for row in rows]

    async def person(self, user_id: str) -> PersonRow | None:
        row = (
            await self._conn.execute(
                select(users.c.id, users.c.email_ct, users.c.name_ct).where(users.c.id == user_id)
            )
        ).first()
        return None if row is None else PersonRow(row[0], bytes(row[1]), bytes(row[2]))

    async def add_workspace(self, workspace_id: str, name: str, now: datetime) -> None:
        await self._conn.execute(
            insert(workspaces).values(id=workspace_id, name=name, created_at=now)
        )

    async def email_verified(self, user_id: str) -> bool:
        verified_at = (
            await self._conn.execute(select(users.c.email_verified_at).where(users.c.id == user_id))
        ).scalar_one_or_none()
        return verified_at is not None

    async def workspace_name(self, workspace_id: str) -> str | None:
        return (
            await self._conn.execute(
                select(workspaces.c.name).where(workspaces.c.id == workspace_id)
            )
        ).scalar_one_or_none()

    async def member_with_email_index(self, workspace_id: str, tokens: list[str]) -> bool:
        """Whether a member of the workspace has one of these email index tokens."""
        row = (
            await self._conn.execute(
                select(memberships.c.user_id)
                .join_from(memberships, users, users.c.id == memberships.c.user_id)
                .where(memberships.c.workspace_id == workspace_id, users.c.email_index.in_(tokens))
            )
        ).first()
        return row is not None
