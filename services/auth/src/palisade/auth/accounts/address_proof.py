"""The one place where an emailed link proves that a user controls their login address.

Every emailed secret that reached the user's address proves it: the verification link, a
redeemed magic link, a completed password reset, a confirmed email change. Each calls
prove_address inside the transaction that consumes the secret.

The first proof (users.email_verified_at NULL -> set) is where account pre-hijacking is undone:
someone who signed up with another person's address before that person did (and kept a
session) loses, in the proving transaction:
- every session created before the proof, through the normal revocation path (committed with
  the proof, published on the revocation feed, so every gateway evicts the tokens at once),
  and any second step of a login they had pending;
- every email-change link the account requested (one kept back would move the owner's
  account to the holder's address later);
- the API keys the account created, in every workspace (a key revocation request with the
  reason account_reclaimed), and the invitations it sent that are still open;
- when the proof is a magic link: the password. The account was never verified, so whoever
  chose its password is unknown; it becomes unusable (passwords/hashing.py
  UNUSABLE_PASSWORD_HASH, which no password verifies), `user.password_cleared` is recorded,
  and the owner sets a password with a reset (the sign-in email says so). A first proof by
  the verification link keeps the password: that link is the signer-up's own normal flow
  (its email says not to confirm an account one did not create).
The proof is recorded as `email.verified`. Later proofs change nothing: the address was
already the owner's.

    async with store.transaction() as tx:
        ...                                             # consume the emailed token
        proof = await prove_address(tx, user_id, now=now, sessions=sessions,
                                    client=client, via="magic_link")
        ...                                             # e.g. the new session (after the proof)
    await proof.announce(sessions)                      # after commit
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from palisade.auth.accounts.key_revocations import ACCOUNT_RECLAIMED, request_key_revocation
from palisade.auth.links.tables import EMAIL_CHANGE, account_tokens
from palisade.auth.mfa.store import MfaRecords
from palisade.auth.passwords.hashing import UNUSABLE_PASSWORD_HASH
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.sessions.revocation import RevocationNotice
from palisade.auth.store import AuthTransaction, users
from palisade.auth.team.invitation_records import InvitationRecords, invitations
from palisade.common.outbox import SecurityEvent

# Reason stored on (and published with) the sessions a first proof ends.
PRE_PROOF_SESSIONS_REASON = "email_verified"
# The proof whose first use also clears the password (see the module doc).
MAGIC_LINK_PROOF = "magic_link"


@dataclass(frozen=True)
class AddressProof:
    """What prove_address did. Truthy when this was the address's first proof."""

    first: bool
    # The sessions the first proof ended (queued in the transaction's revocation outbox).
    revocation: RevocationNotice | None = None

    def __bool__(self) -> bool:
        return self.first

    async def announce(self, sessions: SessionManager) -> None:
        """After the proving transaction committed: wakes the revocation relay now rather than
        at its next pass (the notice is in the outbox either way, so it is never lost)."""
        if self.revocation is not None:
            await sessions.announce(self.revocation)


async def prove_address(
    tx: AuthTransaction,
    user_id: str,
    *,
    now: datetime,
    sessions: SessionManager,
    client: ClientInfo,
    via: str,
    actor: str | None = None,
    new_account: bool = False,
) -> AddressProof:
    """Records that user_id's current login address was proven at `now` by `via` (e.g.
    "email_verification", "magic_link", "password_reset", "email_change").

    Call it BEFORE creating any session in the same transaction: a first proof ends every
    live session of the user, and one made after it must survive. One conditional UPDATE
    decides which of several racing proofs is the first, so the sessions end exactly once.

    new_account: the account was created in this very transaction (an invitation accepted
    by a new person), so no one held it before and it can have no API keys: no revocation is
    queued. Queued anyway, it could reach apikeys only after the new owner's first key was
    made, and revoke that.
    """
    first = (
        await tx.conn.execute(
            update(users)
            .where(users.c.id == user_id, users.c.email_verified_at.is_(None))
            .values(email_verified_at=now)
            .returning(users.c.id)
        )
    ).first() is not None
    if not first:
        return AddressProof(first=False)
    actor = actor or f"user:{user_id}"
    # Whoever held the account before its owner proved the address loses what they hold.
    await MfaRecords(tx).retire_mfa_challenges(user_id, now)
    await retire_email_changes(tx, user_id, now)
    if via == MAGIC_LINK_PROOF:
        await _clear_password(tx, user_id, now=now, actor=actor, client=client)
    await _revoke_open_invitations(tx, user_id, now=now, actor=actor, client=client)
    if not new_account:
        await request_key_revocation(
            tx, user_id=user_id, workspace_id=None, reason=ACCOUNT_RECLAIMED
        )
    revocation = await sessions.revoke_all_in(
        tx,
        user_id=user_id,
        keep=None,
        reason=PRE_PROOF_SESSIONS_REASON,
        actor=actor,
        client=client,
        event_type="session.revoked",
    )
    await tx.emit(
        SecurityEvent(
            type="email.verified",
            occurred_at=now,
            actor=actor,
            subject=user_id,
            ip=client.ip,
            device=client.device,
            details={"via": via, "sessions_ended": len(revocation.session_ids)},
        )
    )
    return AddressProof(first=True, revocation=revocation)


async def retire_email_changes(tx: AuthTransaction, user_id: str, now: datetime) -> None:
    """Uses up every outstanding email-change link of the user, in tx: whoever holds the
    account now (its owner, after a first proof, a password change, a reset or "sign out
    everywhere") must not have it moved later by a link requested before."""
    await tx.conn.execute(
        update(account_tokens)
        .where(
            account_tokens.c.user_id == user_id,
            account_tokens.c.purpose == EMAIL_CHANGE.name,
            account_tokens.c.consumed_at.is_(None),
        )
        .values(consumed_at=now)
    )


async def _clear_password(
    tx: AuthTransaction, user_id: str, *, now: datetime, actor: str, client: ClientInfo
) -> None:
    # Unconditional: a login that verified the old hash re-checks it under the row lock
    # (AuthTransaction.lock_password) and finds it gone.
    await tx.conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(password_hash=UNUSABLE_PASSWORD_HASH, password_changed_at=now)
    )
    await tx.emit(
        SecurityEvent(
            type="user.password_cleared",
            occurred_at=now,
            actor=actor,
            subject=user_id,
            ip=client.ip,
            device=client.device,
            reason="first_proof_by_magic_link",
        )
    )


async def _revoke_open_invitations(
    tx: AuthTransaction, user_id: str, *, now: datetime, actor: str, client: ClientInfo
) -> None:
    rows = (
        await tx.conn.execute(
            select(invitations.c.id, invitations.c.workspace_id).where(
                invitations.c.created_by == user_id, invitations.c.used_at.is_(None)
            )
        )
    ).all()
    workspace_of = {row.id: row.workspace_id for row in rows}
    for invitation_id in await InvitationRecords(tx).close(list(workspace_of), now):
        await tx.emit(
            SecurityEvent(
                type="invitation.revoked",
                occurred_at=now,
                actor=actor,
                subject=invitation_id,
                workspace_id=workspace_of[invitation_id],
                ip=client.ip,
                device=client.device,
                reason="account_reclaimed",
                details={"invitation_id": invitation_id},
            )
        )
