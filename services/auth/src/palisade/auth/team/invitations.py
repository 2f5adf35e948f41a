"""Inviting people to a workspace: create (an emailed single-use link), list, revoke.

- Only owners and admins invite (checked in the database under the workspace lock, not from
  the assertion), and never for a role above their own (an admin cannot invite an owner).
- An account whose address is not verified may not invite while "invite_members" is among
  the unverified restrictions (PALISADE_AUTH_UNVERIFIED_RESTRICTIONS, the one setting the
  gateway enforces too): auth refuses it itself as well, in case a call arrives otherwise.
- The link carries a 256-bit token from the single-use core, stored as SHA-256, valid 7 days,
  bound to the invited address (sealed, with its blind index). Re-inviting an address with a
  pending invitation replaces it: the old link dies in the same transaction.
- Inviting an address that already belongs to a member is 409 already_member.
Accepting is joining.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from palisade.auth.accounts.principals import NotAMember
from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT, normalize_email
from palisade.auth.errors import InvalidEmail
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.mail import MailQueue, OutgoingEmail, SealedEmail
from palisade.auth.mail.templates import invitation_email
from palisade.auth.sessions.manager import ClientInfo
from palisade.auth.store import AuthStore, AuthTransaction
from palisade.auth.team.errors import (
    AlreadyMember,
    EmailNotVerifiedToInvite,
    InsufficientRole,
    InvitationAccepted,
    InvitationNotFound,
)
from palisade.auth.team.invitation_records import (
    ACCEPTED,
    INVITATION,
    INVITATION_ID,
    INVITATION_TABLE,
    REVOKED,
    InvitationRecords,
    InvitationRow,
    email_aad,
)
from palisade.auth.team.paging import decode_cursor, encode_cursor, page_size
from palisade.auth.team.records import MembershipRow, TeamRecords
from palisade.auth.team.roles import MANAGERS, parse_role, require_not_above
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.outbox import SecurityEvent

CONFIRM_PATH = "/auth/invitation"
INVITATION_LIFETIME = timedelta(days=7)


@dataclass(frozen=True)
class CreatedInvitation:
    invitation_id: str
    expires_at: datetime


@dataclass(frozen=True)
class InvitationView:
    invitation_id: str
    email: str
    role: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    state: str


class Invitations:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        mail: MailQueue,
        public_base_url: str,
        unverified_may_invite: bool,
        clock: Clock,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._mail = mail
        self._public_base_url = public_base_url.rstrip("/")
        self._unverified_may_invite = unverified_may_invite
        self._clock = clock
        self.tokens = SingleUseTokens(table=INVITATION_TABLE, purpose=INVITATION, clock=clock)

    def _link(self, token: str) -> str:
        return f"{self._public_base_url}{CONFIRM_PATH}?token={quote(token)}"

    async def create(
        self, *, actor_id: str, workspace_id: str, email: str, role: str, client: ClientInfo
    ) -> CreatedInvitation:
        email = normalize_email(email)
        role = parse_role(role)
        async with self._store.transaction() as tx:  # fail fast, before any crypto call
            records = TeamRecords(tx)
            await self._inviter(tx, records, workspace_id, actor_id, role)
            workspace_name = await records.workspace_name(workspace_id) or ""
        tokens = await self._crypto.blind_index(
            email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
        )
        invitation_id = f"inv_{uuid.uuid4().hex}"
        token = self.tokens.new_token()
        days = INVITATION_LIFETIME.days
        message = invitation_email(
            to=email, link=self._link(token), workspace=workspace_name, role=role, days=days
        )
        sealed = await self._seal(message)
        [email_ct] = await self._crypto.encrypt([(email.encode(), email_aad(invitation_id))])
        async with self._store.transaction() as tx:
            records = TeamRecords(tx)
            await self._inviter(tx, records, workspace_id, actor_id, role)  # again, locked
            if await records.member_with_email_index(workspace_id, tokens):
                raise AlreadyMember()
            now = self._clock.now()
            invitations = InvitationRecords(tx)
            replaced = await invitations.close(
                await invitations.pending_for(workspace_id, tokens, now), now
            )
            for old in replaced:
                await self._revoked_event(tx, old, workspace_id, actor_id, client, "replaced")
            issued = await self.tokens.issue(
                tx,
                token=token,
                user_id=invitation_id,  # the core's owner column here is the invitation's id
                lifetime=INVITATION_LIFETIME,
                retire_siblings=False,
                values={
                    "workspace_id": workspace_id,
                    "email_index": tokens[0],
                    "email_ct": email_ct,
                    "role": role,
                    "created_by": actor_id,
                },
            )
            await self._mail.enqueue(tx, sealed)
            await tx.emit(
                SecurityEvent(
                    type="member.invited",
                    occurred_at=now,
                    actor=f"user:{actor_id}",
                    subject=invitation_id,
                    workspace_id=workspace_id,
                    ip=client.ip,
                    device=client.device,
                    details={
                        "invitation_id": invitation_id,
                        "role": role,
                        "replaced": len(replaced),
                    },
                )
            )
        self._mail.notify()
        return CreatedInvitation(invitation_id, issued.expires_at)

    async def list(
        self, *, actor_id: str, workspace_id: str, page_size_requested: int, page_token: str
    ) -> tuple[list[InvitationView], str]:
        size = page_size(page_size_requested)
        after = decode_cursor(page_token, INVITATION_ID) if page_token else None
        async with self._store.transaction() as tx:
            await self._manager(TeamRecords(tx), workspace_id, actor_id, lock=False)
            rows = await InvitationRecords(tx).page(workspace_id, limit=size + 1, after=after)
        more = len(rows) > size
        rows = rows[:size]
        if not rows:
            return [], ""
        # Erased addresses (expired, or the member's account deleted) show as empty.
        sealed = [r for r in rows if r.email_ct]
        opened = await self._crypto.decrypt(
            [(r.email_ct, email_aad(r.id)) for r in sealed], tolerate_erased=True
        )
        addresses = {r.id: (p or b"").decode() for r, p in zip(sealed, opened, strict=True)}
        now = self._clock.now()
        views = [
            InvitationView(
                r.id,
                addresses.get(r.id, ""),
                r.role,
                r.created_by,
                r.created_at,
                r.expires_at,
                r.state(now),
            )
            for r in rows
        ]
        last = rows[-1]
        return views, encode_cursor(last.created_at, last.id) if more else ""

    async def revoke(
        self, *, actor_id: str, workspace_id: str, invitation_id: str, client: ClientInfo
    ) -> None:
        """Revokes a pending (or expired) invitation; revoking a revoked one changes nothing.
        An accepted one is 409: its member is removed instead."""
        async with self._store.transaction() as tx:
            actor = await self._manager(TeamRecords(tx), workspace_id, actor_id, lock=True)
            row = await self._in_workspace(tx, workspace_id, invitation_id)
            require_not_above(actor.role, row.role)
            state = row.state(self._clock.now())
            if state == ACCEPTED:
                raise InvitationAccepted()
            if state == REVOKED:
                return
            if await InvitationRecords(tx).close([row.id], self._clock.now()):
                await self._revoked_event(tx, row.id, workspace_id, actor_id, client, "revoked")
            else:  # accepted in between (it cannot be: the workspace is locked); say so
                raise InvitationAccepted()

    async def _in_workspace(
        self, tx: AuthTransaction, workspace_id: str, invitation_id: str
    ) -> InvitationRow:
        if not INVITATION_ID.fullmatch(invitation_id):
            raise InvitationNotFound()
        row = await InvitationRecords(tx).by_id(workspace_id, invitation_id)
        if row is None:
            raise InvitationNotFound()  # another workspace's looks like none at all
        return row

    async def _inviter(
        self,
        tx: AuthTransaction,
        records: TeamRecords,
        workspace_id: str,
        actor_id: str,
        role: str,
    ) -> None:
        actor = await self._manager(records, workspace_id, actor_id, lock=True)
        require_not_above(actor.role, role)
        if not self._unverified_may_invite and not await records.email_verified(actor_id):
            raise EmailNotVerifiedToInvite()

    @staticmethod
    async def _manager(
        records: TeamRecords, workspace_id: str, actor_id: str, *, lock: bool
    ) -> MembershipRow:
        if lock and not await records.lock_workspace(workspace_id):
            raise NotAMember()
        actor = await records.membership(workspace_id, actor_id)
        if actor is None:
            raise NotAMember()
        if actor.role not in MANAGERS:
            raise InsufficientRole()
        return actor

    async def _seal(self, message: OutgoingEmail) -> SealedEmail:
        try:
            return await self._mail.seal(message)
        except ValueError:  # an address the mail layer cannot carry (a non-ASCII local part)
            raise InvalidEmail("this address cannot receive email") from None

    async def _revoked_event(
        self,
        tx: AuthTransaction,
        invitation_id: str,
        workspace_id: str,
        actor_id: str,
        client: ClientInfo,
        reason: str,
    ) -> None:
        await tx.emit(
            SecurityEvent(
                type="invitation.revoked",
                occurred_at=self._clock.now(),
                actor=f"user:{actor_id}",
                subject=invitation_id,
                workspace_id=workspace_id,
                ip=client.ip,
                device=client.device,
                reason=reason,
                details={"invitation_id": invitation_id},
            )
        )
