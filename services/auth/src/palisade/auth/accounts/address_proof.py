"""The one place where an emailed link proves that a user controls their login address.

Every emailed secret that reached the user's address proves it: the verification link, a
redeemed magic link, a completed password reset, a confirmed email change. Each calls
prove_address inside the transaction that consumes the secret.

The first proof (users.email_verified_at NULL -> set) is where account pre-hijacking is undone:
someone who signed up with another person's address before that person did (and kept a
session) loses every session created before the proof, through the normal revocation path
(committed with the proof, published on the revocation feed, so every gateway evicts the
tokens at once), and any second step of a login they had pending. The proof is recorded as
`email.verified`. Later proofs change nothing: the address was already the owner's.

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

from sqlalchemy import update

from palisade.auth.mfa.store import MfaRecords
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.sessions.revocation import RevocationNotice
from palisade.auth.store import AuthTransaction, users
from palisade.common.outbox import SecurityEvent

# Reason stored on (and published with) the sessions a first proof ends.
PRE_PROOF_SESSIONS_REASON = "email_verified"


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
) -> AddressProof:
    """Records that user_id's current login address was proven at `now` by `via` (e.g.
    "email_verification", "magic_link", "password_reset", "email_change").

    Call it BEFORE creating any session in the same transaction: a first proof ends every
    live session of the user, and one made after it must survive. One conditional UPDATE
    decides which of several racing proofs is the first, so the sessions end exactly once.
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
