"""Deleting an account (`DELETE /v1/me`): the person's PII becomes unreadable everywhere.

Needs recent authentication (a login from the last RECENT_AUTH_SECONDS). A sole owner of a
workspace that has other members must first hand it over: 409 ownership_transfer_required,
naming nothing (the caller can see their own workspaces). Otherwise one transaction, in auth's
lock order (the workspaces the person belongs to, in id order, FOR NO KEY UPDATE, as every team
change takes them, team/records.py; then the user row, exclusively; then their sessions):

- every session ends (revocation notices in the outbox, so every gateway refuses their tokens
  on the next request), and the caller's own must still be live;
- every API key the person created, in every workspace, is revoked through the durable key
  revocation outbox (reason account_deleted; a second sweep a minute later catches a key made
  meanwhile through a gateway that still held a cached session, as for a disabled account);
- their memberships go (member.removed in each workspace's log, reason account_deleted), the
  pending invitations they sent there are revoked, and a workspace left without members is
  closed (workspaces.closed_at): kept, so what names it keeps its references;
- everything else of the person in auth's rows is erased (accounts/erasure.py): the row keeps
  only its id as the pseudonym, with no address, index, ciphertext or usable password;
- one `account.deleted` event (actor and subject: the id; no PII);
- the shred of the person's subject key (`user:<id>`) in crypto is queued
  (accounts/subject_shreds.py).

Right after the commit the request itself asks crypto to shred the subject, so the common case
is immediate; if crypto is down the deletion still succeeds (nothing personal is readable in
auth's rows by then) and the relay shreds it once crypto is back. From then on every copy of
the person's ciphertexts, anywhere, answers subject_erased; the security log keeps its events
(and its chain) with the PII fields unreadable.

The account can never be signed into again: no address finds it, no credential of it is left,
every session is revoked, and deleted_at (with disabled_at) refuses any session made for it.
The address may sign up afresh: a new account with a new id. Deleting is idempotent: parallel
calls delete once (one event, one shred); a call that finds the account deleted answers as the
first did.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update

from palisade.auth.accounts.disabling import SWEEP_AFTER
from palisade.auth.accounts.erasure import erase_user
from palisade.auth.accounts.key_revocations import (
    request_key_revocation,
    schedule_key_revocation,
)
from palisade.auth.accounts.subject_shreds import ShredRelay, ShredRequest, queue_shred
from palisade.auth.errors import NotSignedIn, OwnershipTransferRequired, RecentAuthRequired
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.sessions.recent_auth import RecentAuth
from palisade.auth.sessions.revocation import RevocationNotice
from palisade.auth.sessions.store import SessionRecords
from palisade.auth.store import AuthStore, AuthTransaction, memberships, workspaces
from palisade.auth.subjects import user_subject
from palisade.auth.team.invitation_records import InvitationRecords
from palisade.auth.team.records import TeamRecords, WorkspaceMembership
from palisade.auth.team.roles import OWNER, ROLES
from palisade.common.clock import Clock
from palisade.common.outbox import SecurityEvent

REASON = "account_deleted"
# The deletion's own events carry no client: audit would seal its IP and device under the
# subject being shredded, unreadable at once.
_NO_CLIENT = ClientInfo(ip=None, device=None)


@dataclass(frozen=True)
class _Deleted:
    notice: RevocationNotice
    shred: ShredRequest


class AccountDeletion:
    def __init__(
        self,
        *,
        store: AuthStore,
        sessions: SessionManager,
        recent_auth: RecentAuth,
        shreds: ShredRelay,
        clock: Clock,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._recent_auth = recent_auth
        self._shreds = shreds
        self._clock = clock

    async def delete(self, *, user_id: str, session_id: str | None, client: ClientInfo) -> None:
        """Deletes the signed-in user's account (see the module doc); returns also when it
        was deleted already. Raises RecentAuthRequired, OwnershipTransferRequired, or
        NotSignedIn for a session that ended meanwhile."""
        if await self._deleted(user_id):
            return  # a repeated or parallel call: it is done
        try:
            await self._recent_auth.require(
                user_id=user_id, session_id=session_id, client=client, action="DeleteAccount"
            )
        except RecentAuthRequired:
            # A parallel call may have deleted the account (ending this session) in between.
            if await self._deleted(user_id):
                return
            raise

        async def unit(tx: AuthTransaction) -> _Deleted | None:
            return await self._delete_in(tx, user_id, session_id)

        deleted = await self._store.run(unit)
        if deleted is None:
            return
        await self._sessions.announce(deleted.notice)
        # Right away in the common case; if crypto is down, the relay retries until it is back.
        await self._shreds.shred_now(deleted.shred)

    async def _deleted(self, user_id: str) -> bool:
        async with self._store.transaction() as tx:
            user = await tx.user(user_id)
        return user is not None and user.deleted

    async def _delete_in(
        self, tx: AuthTransaction, user_id: str, session_id: str | None
    ) -> _Deleted | None:
        now = self._clock.now()
        team = TeamRecords(tx)
        records = SessionRecords(tx)
        # Lock order: the workspaces first (as team changes take them), then the user row.
        locked = {m.workspace_id for m in await team.workspaces_of(user_id)}
        for workspace_id in sorted(locked):
            await team.lock_workspace(workspace_id)
        if not await records.lock_user(user_id, exclusive=True):
            raise NotSignedIn()
        user = await tx.user(user_id)
        if user is None:
            raise NotSignedIn()
        if user.deleted:
            return None  # a parallel call got here first
        session = await records.session(session_id) if session_id else None
        if session is None or session.user_id != user_id or session.revoked_at is not None:
            raise NotSignedIn()  # ended since the recent-auth check
        joined = await team.workspaces_of(user_id)
        for workspace_id in sorted({m.workspace_id for m in joined} - locked):
            # Joined after our first look (an invitation accepted meanwhile): out of order,
            # which can deadlock with a team change there; the store runs us again then.
            await team.lock_workspace(workspace_id)
        closing = [await self._leaving(tx, team, m) for m in joined]
        notice = await self._sessions.revoke_all_in(
            tx,
            user_id=user_id,
            keep=None,
            reason=REASON,
            actor=f"user:{user_id}",
            client=_NO_CLIENT,
            event_type="session.revoked",
        )
        await request_key_revocation(tx, user_id=user_id, workspace_id=None, reason=REASON)
        await schedule_key_revocation(
            tx,
            user_id=user_id,
            workspace_id=None,
            reason=REASON,
            due=now + SWEEP_AFTER,
            wall_delay=SWEEP_AFTER,
        )
        for membership, closes in zip(joined, closing, strict=True):
            await self._leave(tx, team, user_id, membership, closes=closes)
        erased = await erase_user(tx, user_id, now)
        shred = await queue_shred(tx, subject=user_subject(user_id), now=now)
        await tx.emit(
            SecurityEvent(
                type="account.deleted",
                occurred_at=now,
                actor=f"user:{user_id}",
                subject=user_id,
                details={
                    "sessions_ended": len(notice.session_ids),
                    "workspaces_left": len(joined),
                    "workspaces_closed": sum(closing),
                    "mails_dropped": erased.mails_dropped,
                },
            )
        )
        return _Deleted(notice, shred)

    @staticmethod
    async def _leaving(
        tx: AuthTransaction, team: TeamRecords, membership: WorkspaceMembership
    ) -> bool:
        """Whether leaving this workspace closes it (no member is left); raises
        OwnershipTransferRequired for the sole owner of one with other members. Decided
        under the workspace lock, so no team change can make it wrong before commit."""
        others = await _members(tx, membership.workspace_id) - 1
        if others == 0:
            return True
        if membership.role == OWNER and await team.owners(membership.workspace_id) <= 1:
            raise OwnershipTransferRequired()
        return False

    async def _leave(
        self,
        tx: AuthTransaction,
        team: TeamRecords,
        user_id: str,
        membership: WorkspaceMembership,
        *,
        closes: bool,
    ) -> None:
        now = self._clock.now()
        workspace_id = membership.workspace_id
        await team.delete_membership(workspace_id, user_id)
        invitations = InvitationRecords(tx)
        revoked = await invitations.close(
            await invitations.pending_by(workspace_id, user_id, now, roles=ROLES), now
        )
        for invitation_id in revoked:
            await tx.emit(
                SecurityEvent(
                    type="invitation.revoked",
                    occurred_at=now,
                    actor="system",
                    subject=invitation_id,
                    workspace_id=workspace_id,
                    reason=REASON,
                    details={"invitation_id": invitation_id, "created_by": user_id},
                )
            )
        if closes:
            await tx.conn.execute(
                update(workspaces).where(workspaces.c.id == workspace_id).values(closed_at=now)
            )
        await tx.emit(
            SecurityEvent(
                type="member.removed",
                occurred_at=now,
                actor=f"user:{user_id}",
                subject=user_id,
                workspace_id=workspace_id,
                reason=REASON,
                details={"role": membership.role, "workspace_closed": closes},
            )
        )


async def _members(tx: AuthTransaction, workspace_id: str) -> int:
    return int(
        (
            await tx.conn.execute(
                select(func.count())
                .select_from(memberships)
                .where(memberships.c.workspace_id == workspace_id)
            )
        ).scalar_one()
    )
