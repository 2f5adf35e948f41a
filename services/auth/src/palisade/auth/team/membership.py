"""Changing a member's role and removing a member (or leaving), decided under the workspace's
row lock (team/records.py), so the last-owner rule holds under any concurrency.

A role change reaches the member's next request on every gateway replica: the change commits
with a notice on the revocation feed naming the member's live sessions in the workspace, which
makes every gateway forget their cached validations; the next request is validated again and
carries the new role. The sessions themselves stay valid (the member is not signed out): only
what a gateway remembered about them goes.

Removal ends the member's sessions in the workspace in the same transaction (the normal
revocation path: committed, then published by the durable relay), and asks the API-key service,
through auth's durable key-revocation outbox, to revoke the keys they created in it. Pending
invitations they sent there die with their membership (an invitation is only as good as the
member who sent it). Someone removed from their last workspace keeps their account: they get a
new personal workspace of their own (as at sign-up), so signing in, accepting a later
invitation or deleting the account all keep working.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from palisade.auth.accounts.key_revocations import MEMBER_REMOVED, request_key_revocation
from palisade.auth.accounts.principals import NotAMember
from palisade.auth.accounts.service import _pii_aad
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.sessions.revocation import RevocationNotice
from palisade.auth.store import AuthStore, AuthTransaction
from palisade.auth.team.errors import InsufficientRole, LastOwner, MemberNotFound
from palisade.auth.team.invitation_records import InvitationRecords
from palisade.auth.team.records import MembershipRow, TeamRecords
from palisade.auth.team.roles import MANAGERS, OWNER, ROLES, parse_role, rank, require_not_above
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient
from palisade.common.outbox import SecurityEvent

_USER_ID = re.compile(r"usr_[0-9a-f]{32}")
PERSONAL_WORKSPACE_NAME = "My workspace"


@dataclass(frozen=True)
class MemberView:
    user_id: str
    name: str
    email: str
    role: str
    joined_at: datetime


class TeamMembership:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        sessions: SessionManager,
        clock: Clock,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._sessions = sessions
        self._clock = clock

    async def change_role(
        self,
        *,
        actor_id: str,
        workspace_id: str,
        user_id: str,
        role: str,
        client: ClientInfo,
    ) -> MemberView:
        role = parse_role(role)
        notice: RevocationNotice | None = None
        async with self._store.transaction() as tx:
            records = TeamRecords(tx)
            actor = await self._manager(records, workspace_id, actor_id)
            target = await self._target(records, workspace_id, user_id)
            require_not_above(actor.role, target.role)  # an admin never changes an owner
            require_not_above(actor.role, role)  # nor makes one
            if target.role != role:
                if target.role == OWNER and await records.owners(workspace_id) <= 1:
                    raise LastOwner()
                now = self._clock.now()
                await records.set_role(workspace_id, user_id, role)
                # Invitations they sent for roles now above theirs are no longer theirs to give.
                await self._close_invitations(
                    tx, workspace_id, user_id, now, roles=[r for r in ROLES if rank(r) > rank(role)]
                )
                notice = await self._sessions.refresh_grants_in(
                    tx, user_id=user_id, workspace_id=workspace_id, reason="role_changed"
                )
                await tx.emit(
                    SecurityEvent(
                        type="member.role_changed",
                        occurred_at=now,
                        actor=f"user:{actor_id}",
                        subject=user_id,
                        workspace_id=workspace_id,
                        ip=client.ip,
                        device=client.device,
                        details={"from": target.role, "to": role},
                    )
                )
            person = await records.person(user_id)
        if notice is not None:
            await self._sessions.announce(notice)
        assert person is not None  # a membership's user row exists (foreign key)
        email, name = await self._crypto.decrypt(
            [
                (person.email_ct, _pii_aad(user_id, "email")),
                (person.name_ct, _pii_aad(user_id, "name")),
            ]
        )
        return MemberView(user_id, name.decode(), email.decode(), role, target.joined_at)

    async def remove(
        self, *, actor_id: str, workspace_id: str, user_id: str, client: ClientInfo
    ) -> None:
        """Removes user_id from the workspace: owners and admins (never someone above them),
        or the member themselves (leaving)."""
        async with self._store.transaction() as tx:
            records = TeamRecords(tx)
            now = self._clock.now()
            leaving = actor_id == user_id
            if leaving:
                target = await self._member(records, workspace_id, actor_id)
            else:
                actor = await self._manager(records, workspace_id, actor_id)
                target = await self._target(records, workspace_id, user_id)
                require_not_above(actor.role, target.role)
            if target.role == OWNER and await records.owners(workspace_id) <= 1:
                raise LastOwner()
            await records.delete_membership(workspace_id, user_id)
            await self._close_invitations(tx, workspace_id, user_id, now, roles=ROLES)
            notice = await self._sessions.revoke_where_in(
                tx,
                user_id=user_id,
                workspace_id=workspace_id,
                reason="member_removed",
                actor=f"user:{actor_id}",
                client=client,
                event_type="session.revoked",
            )
            # Durable: an outbox row in this transaction, relayed to apikeys with retries.
            await request_key_revocation(
                tx, user_id=user_id, workspace_id=workspace_id, reason=MEMBER_REMOVED
            )
            personal = None
            if not await records.workspaces_of(user_id):
                personal = await self._personal_workspace(records, user_id, now)
            await tx.emit(
                SecurityEvent(
                    type="member.removed",
                    occurred_at=now,
                    actor=f"user:{actor_id}",
                    subject=user_id,
                    workspace_id=workspace_id,
                    ip=client.ip,
                    device=client.device,
                    reason="left" if leaving else "removed",
                    details={
                        "role": target.role,
                        "sessions_ended": len(notice.session_ids),
                        "personal_workspace_id": personal,
                    },
                )
            )
        await self._sessions.announce(notice)

    async def _personal_workspace(self, records: TeamRecords, user_id: str, now: datetime) -> str:
        workspace_id = f"ws_{uuid.uuid4().hex}"
        await records.add_workspace(workspace_id, PERSONAL_WORKSPACE_NAME, now)
        await records.add_membership(workspace_id, user_id, OWNER, now)
        return workspace_id

    async def _close_invitations(
        self,
        tx: AuthTransaction,
        workspace_id: str,
        created_by: str,
        now: datetime,
        *,
        roles: tuple[str, ...] | list[str],
    ) -> None:
        invitations = InvitationRecords(tx)
        closed = await invitations.close(
            await invitations.pending_by(workspace_id, created_by, now, roles=roles), now
        )
        for invitation_id in closed:
            await tx.emit(
                SecurityEvent(
                    type="invitation.revoked",
                    occurred_at=now,
                    actor="system",
                    subject=invitation_id,
                    workspace_id=workspace_id,
                    reason="inviter_lost_role",
                    details={"invitation_id": invitation_id, "created_by": created_by},
                )
            )

    @staticmethod
    async def _member(records: TeamRecords, workspace_id: str, user_id: str) -> MembershipRow:
        """The caller's own membership, with the workspace locked; NotAMember without one."""
        if not await records.lock_workspace(workspace_id):
            raise NotAMember()
        member = await records.membership(workspace_id, user_id)
        if member is None:
            raise NotAMember()  # removed since the gateway looked
        return member

    @classmethod
    async def _manager(cls, records: TeamRecords, workspace_id: str, user_id: str) -> MembershipRow:
        """The caller's membership, which must be an owner's or an admin's: from the database,
        under the workspace lock, never from the assertion (the role may have changed)."""
        member = await cls._member(records, workspace_id, user_id)
        if member.role not in MANAGERS:
            raise InsufficientRole()
        return member

    @staticmethod
    async def _target(records: TeamRecords, workspace_id: str, user_id: str) -> MembershipRow:
        """The member acted on: not_found for anyone not in this workspace (whether or not
        they exist elsewhere), including ids of a shape auth never mints."""
        if not _USER_ID.fullmatch(user_id):
            raise MemberNotFound()
        member = await records.membership(workspace_id, user_id)
        if member is None:
            raise MemberNotFound()
        return member
