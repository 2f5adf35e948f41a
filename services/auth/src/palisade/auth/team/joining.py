"""Accepting an invitation: joining the inviting workspace, with a session in it.

- The token is consumed by the single-use core's one conditional UPDATE, inside a transaction
  that holds the workspace's lock: of any number of parallel accepts exactly one wins; the
  others find it used (invalid_invitation). An expired one is invitation_expired.
- Someone without an account (no user has the invited address) sends a name and a password:
  the account is made as sign-up makes one (same validation, password policy, Argon2id hash,
  sealed PII, blind index) and its address counts as verified, since the link proved it.
- Someone with an account must send their bearer (the gateway validates it), signed in with
  the invited address (otherwise 403 invitation_email_mismatch). Their new session in the
  workspace carries on the login of the session they sent (same login time and absolute
  expiry): accepting is no fresh login. The session they sent stays where it is.
- An invitation is only as good as its sender: accepted only while the sender is still an
  owner or admin of the workspace holding at least the invited role.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from palisade.auth.accounts.address_proof import AddressProof, prove_address
from palisade.auth.accounts.service import (
    EMAIL_INDEX_CONTEXT,
    _clean_name,
    _pii_aad,
    normalize_email,
)
from palisade.auth.errors import NotSignedIn
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.passwords.hashing import PasswordHasher
from palisade.auth.passwords.policy import check_new_password
from palisade.auth.sessions.manager import ClientInfo, IssuedTokens, SessionManager
from palisade.auth.store import AuthStore, AuthTransaction, DuplicateEmail
from palisade.auth.subjects import user_subject
from palisade.auth.team.errors import (
    AlreadyMember,
    InvalidInvitation,
    InvitationEmailMismatch,
    InvitationExpired,
    NewMemberDetailsRequired,
    SignInToAccept,
)
from palisade.auth.team.invitation_records import (
    EXPIRED,
    PENDING,
    InvitationRecords,
    InvitationRow,
    email_aad,
)
from palisade.auth.team.records import TeamRecords
from palisade.auth.team.roles import MANAGERS, rank
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.errors import PalisadeError
from palisade.common.outbox import SecurityEvent


@dataclass(frozen=True)
class SignedIn:
    user_id: str
    session_id: str | None


@dataclass(frozen=True)
class _NewAccount:
    user_id: str
    email_index: str
    email_ct: bytes
    name_ct: bytes
    password_hash: str


class Joining:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        hasher: PasswordHasher,
        sessions: SessionManager,
        tokens: SingleUseTokens,
        clock: Clock,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._hasher = hasher
        self._sessions = sessions
        self._tokens = tokens
        self._clock = clock

    async def accept(
        self,
        *,
        token: str,
        name: str,
        password: str,
        signed_in: SignedIn | None,
        client: ClientInfo,
    ) -> IssuedTokens:
        try:
            digest = self._tokens.check(token)
        except PalisadeError:
            raise InvalidInvitation() from None
        # A first look without locks, so no crypto or hashing is spent on a dead link.
        async with self._store.transaction() as tx:
            invitation = await InvitationRecords(tx).by_token_hash(digest)
        self._require_open(invitation)
        assert invitation is not None
        if not invitation.email_ct:  # its address was erased: it expired a moment ago
            raise InvitationExpired()
        [plain] = await self._crypto.decrypt([(invitation.email_ct, email_aad(invitation.id))])
        email = plain.decode()
        account = None
        if signed_in is not None:
            await self._require_address(signed_in.user_id, email)
            member_id = signed_in.user_id
        else:
            try:
                account = await self._new_account(email, name, password)
            except SignInToAccept:
                # The address may have an account because a parallel accept just made it:
                # then this link is used up, and that is the answer.
                async with self._store.transaction() as tx:
                    self._require_open(await InvitationRecords(tx).by_token_hash(digest))
                raise
            member_id = account.user_id
        # Accepted, the invitation's address is the member's: under their subject key from
        # now on (team/invitation_records.py), sealed before the locking transaction.
        [member_email_ct] = await self._crypto.encrypt(
            [(plain, email_aad(invitation.id))], subject=user_subject(member_id)
        )
        async with self._store.transaction() as tx:
            records = TeamRecords(tx)
            if not await records.lock_workspace(invitation.workspace_id):
                raise InvalidInvitation()
            redeemed = await self._tokens.redeem(tx, token, retire_siblings=False)
            if redeemed is None:  # used, revoked or expired since the first look
                self._require_open(await InvitationRecords(tx).by_token_hash(digest))
                raise InvalidInvitation()
            sender = await records.membership(invitation.workspace_id, invitation.created_by)
            if (
                sender is None
                or sender.role not in MANAGERS
                or rank(sender.role) < rank(invitation.role)
            ):
                raise InvalidInvitation()
            issued, proof = await self._join(
                tx, invitation, signed_in, account, client, member_email_ct
            )
        await proof.announce(self._sessions)
        return issued

    async def _join(
        self,
        tx: AuthTransaction,
        invitation: InvitationRow,
        signed_in: SignedIn | None,
        account: _NewAccount | None,
        client: ClientInfo,
        member_email_ct: bytes,
    ) -> tuple[IssuedTokens, AddressProof]:
        records = TeamRecords(tx)
        now = self._clock.now()
        workspace_id = invitation.workspace_id
        continues = None
        if signed_in is not None:
            user_id = signed_in.user_id
            if await records.membership(workspace_id, user_id) is not None:
                raise AlreadyMember()
            if signed_in.session_id:
                # The user row (exclusively: prove_address below may update it) and then the
                # session, locked before the session is read: a first proof racing this either
                # ended the session already (not signed in) or waits and ends the new one too.
                continues = await self._sessions.live_session(
                    tx, signed_in.session_id, user_id=user_id, exclusive_user=True
                )
            if continues is None:
                raise NotSignedIn()
        else:
            assert account is not None
            user_id = account.user_id
            try:
                await tx.insert_user(
                    user_id=user_id,
                    email_index=account.email_index,
                    email_ct=account.email_ct,
                    name_ct=account.name_ct,
                    password_hash=account.password_hash,
                    now=now,
                )
            except DuplicateEmail:  # an account was made for the address meanwhile
                raise SignInToAccept() from None
            await tx.emit(
                SecurityEvent(
                    type="user.signed_up",
                    occurred_at=now,
                    actor=f"user:{user_id}",
                    subject=user_id,
                    workspace_id=workspace_id,
                    ip=client.ip,
                    device=client.device,
                    details={"via": "invitation", "invitation_id": invitation.id},
                )
            )
        # The link reached the invited address: that proves it (before any new session, as
        # prove_address requires: a first proof ends the sessions made before it).
        proof = await prove_address(
            tx,
            user_id,
            now=now,
            sessions=self._sessions,
            client=client,
            via="invitation",
            new_account=signed_in is None,  # the user row was inserted just above
        )
        await records.add_membership(workspace_id, user_id, invitation.role, now)
        await InvitationRecords(tx).mark_accepted(invitation.id, user_id, member_email_ct)
        issued = await self._sessions.start(
            tx,
            user_id=user_id,
            workspace_id=workspace_id,
            remember_me=False,
            client=client,
            continues=continues,
        )
        if continues is None:  # a sign-in, not a signed-in person moving to the workspace
            await self._sessions.observe_sign_in(
                tx,
                user_id=user_id,
                workspace_id=workspace_id,
                client=client,
                method="invitation",
                session_id=issued.session_id,
            )
        await tx.emit(
            SecurityEvent(
                type="member.joined",
                occurred_at=now,
                actor=f"user:{user_id}",
                subject=user_id,
                workspace_id=workspace_id,
                ip=client.ip,
                device=client.device,
                details={
                    "invitation_id": invitation.id,
                    "role": invitation.role,
                    "invited_by": invitation.created_by,
                    "new_account": account is not None,
                    "session_id": issued.session_id,
                },
            )
        )
        return issued, proof

    def _require_open(self, invitation: InvitationRow | None) -> None:
        if invitation is None:
            raise InvalidInvitation()
        state = invitation.state(self._clock.now())
        if state == EXPIRED:
            raise InvitationExpired()
        if state != PENDING:
            raise InvalidInvitation()

    async def _require_address(self, user_id: str, invited: str) -> None:
        async with self._store.transaction() as tx:
            user = await tx.user(user_id)
        if user is None or user.disabled:
            raise NotSignedIn()
        [own] = await self._crypto.decrypt([(user.email_ct, _pii_aad(user_id, "email"))])
        if normalize_email(own.decode()) != normalize_email(invited):
            raise InvitationEmailMismatch()

    async def _new_account(self, email: str, name: str, password: str) -> _NewAccount:
        """What sign-up would store for this person, made before the locking transaction
        (no crypto call or hash while the workspace is locked)."""
        tokens = await self._crypto.blind_index(
            email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
        )
        async with self._store.transaction() as tx:
            existing = await tx.user_by_email_index(tokens)
        if existing is not None:
            raise SignInToAccept()
        if not name or not password:
            raise NewMemberDetailsRequired()
        name = _clean_name(name)
        check_new_password(password, email=email)
        user_id = f"usr_{uuid.uuid4().hex}"
        password_hash = await self._hasher.hash(password)
        email_ct, name_ct = await self._crypto.encrypt(
            [
                (email.encode(), _pii_aad(user_id, "email")),
                (name.encode(), _pii_aad(user_id, "name")),
            ],
            subject=user_subject(user_id),  # auth/subjects.py
        )
        return _NewAccount(user_id, tokens[0], email_ct, name_ct, password_hash)
