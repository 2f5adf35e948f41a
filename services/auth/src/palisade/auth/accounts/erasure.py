"""What a deleted account leaves in auth's database: the statements that erase the rest.

erase_user() runs inside the deletion's transaction (accounts/deletion.py), after the user's
sessions have ended and memberships are gone. Afterwards the user row keeps its id (the
pseudonym every other row and the security log use) and times; nothing of the person can be
read from auth's rows, with or without crypto:

- users: no address and no blind index of it (email_index holds "deleted:<id>", which no
  index token can equal: those start "bi1."), so the address may sign up afresh as a new
  user; no ciphertext (email_ct and name_ct empty); a password nothing verifies; deleted_at,
  and disabled_at too, so every check that keeps disabled accounts out keeps this one out.
- second factors and sign-in secrets: the TOTP secret, backup codes, passkeys (and the
  WebAuthn user handle), pending MFA steps and WebAuthn challenges, magic links and every
  emailed token (verification, reset, email change with its sealed new address, "not me").
- known networks (keyed hashes of where the person signed in from) and pending new-network
  alerts (they hold an IP and a device).
- sessions: their IP and device are emptied (the rows stay, revoked, so their tokens keep
  failing as revoked); refresh-token successors are dropped.
- queued emails addressed to the account are dropped (never sent; the ciphertext goes).
- invitations the person accepted: the address they kept is emptied.
- security events not yet forwarded to audit that name the person lose their IP and device
  (audit would have sealed those under the subject being shredded anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, func, select, update

from palisade.auth.links.tables import account_tokens, magic_links
from palisade.auth.mail.outbox import PENDING, mail_outbox
from palisade.auth.mfa.store import backup_codes, mfa_challenges, totp_credentials
from palisade.auth.passkeys.store import passkeys, webauthn_challenges, webauthn_user_handles
from palisade.auth.passwords.hashing import UNUSABLE_PASSWORD_HASH
from palisade.auth.sessions.new_networks import known_networks, new_network_alerts
from palisade.auth.sessions.store import refresh_tokens, sessions
from palisade.auth.store import AuthTransaction, outbox, users
from palisade.auth.team.invitation_records import InvitationRecords
from palisade.common.audit_ingest import without_pii
from palisade.common.outbox import outbox_pending

# The placeholder email_index of a deleted account (the column is unique and not null).
DELETED_EMAIL_INDEX_PREFIX = "deleted:"
# Why a queued email was dropped (mail_outbox.last_error).
DROPPED_MAIL_REASON = "account_deleted"

# Rows that exist only for the person: deleted outright.
_OWNED_TABLES = (
    totp_credentials,
    backup_codes,
    mfa_challenges,
    passkeys,
    webauthn_user_handles,
    webauthn_challenges,
    magic_links,
    account_tokens,
    known_networks,
    new_network_alerts,
)


@dataclass(frozen=True)
class Erased:
    mails_dropped: int


async def erase_user(tx: AuthTransaction, user_id: str, now: datetime) -> Erased:
    """Erases everything of the user that survives the end of their sessions and memberships
    (see the module doc), inside the caller's transaction."""
    conn = tx.conn
    # The user row first. Changing its unique email_index takes Postgres's strongest row lock,
    # which waits for every transaction still holding the row's FOR KEY SHARE, i.e. one whose
    # insert of a row naming the user (a magic link or reset token being issued right now)
    # has not committed yet; once it has, the statements below see, and erase, that row too.
    await conn.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(
            email_index=DELETED_EMAIL_INDEX_PREFIX + user_id,
            email_ct=b"",
            name_ct=b"",
            password_hash=UNUSABLE_PASSWORD_HASH,
            email_verified_at=None,
            disabled_at=func.coalesce(users.c.disabled_at, now),
            deleted_at=now,
        )
    )
    dropped = await erase_late_arrivals(tx, user_id, now)
    theirs = select(sessions.c.id).where(sessions.c.user_id == user_id).scalar_subquery()
    await conn.execute(
        update(refresh_tokens)
        .where(refresh_tokens.c.session_id.in_(theirs), refresh_tokens.c.successor_ct.is_not(None))
        .values(successor_ct=None)
    )
    await conn.execute(
        update(sessions).where(sessions.c.user_id == user_id).values(ip=None, device=None)
    )
    await InvitationRecords(tx).erase_accepted_by(user_id)
    await _strip_pending_events(tx, user_id)
    return Erased(mails_dropped=dropped)


async def erase_late_arrivals(tx: AuthTransaction, user_id: str, now: datetime) -> int:
    """Drops the emails still queued for the user and deletes the rows that exist only for
    them (the module doc's list); returns how many emails were dropped. The deletion runs it,
    and the shred relay again once crypto confirmed the shred: a request that read the
    account before the deletion and wrote after it (a magic link or reset link being issued
    at that moment) leaves nothing behind for longer than the shred takes."""
    dropped = await tx.conn.execute(
        update(mail_outbox)
        .where(mail_outbox.c.user_id == user_id, PENDING)
        .values(message_ct=None, failed_at=now, last_error=DROPPED_MAIL_REASON)
    )
    for table in _OWNED_TABLES:
        await tx.conn.execute(delete(table).where(table.c.user_id == user_id))
    return int(dropped.rowcount)


async def _strip_pending_events(tx: AuthTransaction, user_id: str) -> None:
    """IP and device out of the events audit has not had yet that name the user (as actor,
    subject or in their details: the id is unique, so a text match finds exactly those)."""
    rows = (
        await tx.conn.execute(
            select(outbox.c.id, outbox.c.payload).where(
                outbox_pending(outbox), outbox.c.payload.contains(user_id, autoescape=True)
            )
        )
    ).all()
    if not rows:
        return
    await tx.conn.execute(
        update(outbox)
        .where(outbox.c.id == bindparam("row_id"))
        .values(payload=bindparam("clean_payload"))
        .execution_options(synchronize_session=False),
        [{"row_id": r.id, "clean_payload": without_pii(r.payload)} for r in rows],
    )
