"""Email change: the login address moves only after the new address confirms.

Request (signed in, recent auth, rate limited per user): always 202, the same work for a free
and a taken new address (one blind-index lookup, one Encrypt, two emails sealed):
- first, whatever the lookup finds, the user's earlier change links are retired (in the same
  transaction): only the newest request can complete, and whether an earlier link survives
  says nothing about the new address;
- free: the new address gets a `/auth/verify-email` link (purpose email_change in
  account_tokens, with the new address sealed under associated data binding the user and the
  field `new_email`, its blind index, and the requesting session's id);
- taken by another account: that account's owner is told someone tried to use their address
  (throttled per address); nothing is stored;
- already the user's own address: nothing happens.
The requester learns nothing about other accounts either way.

A change link also dies when whoever holds the account may have changed: the address's first
proof, a password change or reset, and "sign out everywhere" retire every change link of the
user, and a link confirms only while the session that requested it is live (a link whose
session ended is used up and answers 400 invalid_verification_link).

Confirm (the link's POST, the same route as a verification): one transaction locks the user
row (auth's lock order: before any token), consumes the token, checks the requesting session
is live and the address is still free, moves users.email_ct and email_index, proves the new
address (accounts/address_proof.py: a first proof ends the earlier sessions; otherwise
sessions keep working, the owner proved control by confirming), retires the links sent to the
old address (magic links, verification and reset links, other change links) and queues the
old address's "your email was changed" notice. An address taken between request and confirm
answers 400 email_unavailable (the unique email index is the guard against a racing sign-up
or change; the token is used up only when the change, or that refusal, commits).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NoReturn

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from palisade.auth.accounts.address_proof import (
    AddressProof,
    prove_address,
    retire_email_changes,
)
from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT, normalize_email
from palisade.auth.accounts.verification import (
    EmailLinkPolicy,
    EmailVerifications,
    PendingToken,
    pii_aad,
)
from palisade.auth.bounded import IP_CHARS, clip_optional
from palisade.auth.errors import EmailUnavailable, InvalidVerificationLink, NotSignedIn
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import (
    ACCOUNT_TOKENS,
    EMAIL_CHANGE,
    MAGIC_LINK,
    MAGIC_LINK_TABLE,
    PASSWORD_RESET,
)
from palisade.auth.local_keys import LocalKeys
from palisade.auth.mail import MailQueue
from palisade.auth.mail.account_notices import EMAIL_CHANGED, AccountNotices, masked_email
from palisade.auth.mail.templates import address_in_use_email, email_change_email
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.sessions.store import SessionRecords
from palisade.auth.store import AuthStore, AuthTransaction, users
from palisade.auth.subjects import user_subject
from palisade.auth.throttle import Counter, CounterLimiter, LoginThrottle
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.outbox import SecurityEvent

NEW_EMAIL_FIELD = "new_email"


class _AddressMoved(Exception):
    """The user's address changed between reading it and writing the new one."""


class EmailChanges:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        sessions: SessionManager,
        mail: MailQueue,
        notices: AccountNotices,
        verifications: EmailVerifications,
        limiter: CounterLimiter,
        throttle: LoginThrottle,
        local_keys: LocalKeys,
        policy: EmailLinkPolicy,
        clock: Clock,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._sessions = sessions
        self._mail = mail
        self._notices = notices
        self._verifications = verifications
        self._limiter = limiter
        self._throttle = throttle
        self._local_keys = local_keys
        self._policy = policy
        self._clock = clock
        self._tokens = SingleUseTokens(table=ACCOUNT_TOKENS, purpose=EMAIL_CHANGE, clock=clock)
        # Links sent to the old address, retired when it stops being the login address.
        self._old_address_links = [
            SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK, clock=clock),
            verifications.tokens,
            SingleUseTokens(table=ACCOUNT_TOKENS, purpose=PASSWORD_RESET, clock=clock),
        ]

    async def request(
        self,
        *,
        user_id: str,
        new_email: str,
        client: ClientInfo,
        session_id: str | None = None,
    ) -> None:
        """Always returns (202) for a well-formed address; raises InvalidEmail for a malformed
        one and Throttled past the per-user allowance. Recent auth is the caller's check.
        session_id: the requesting session; the link confirms only while it is live."""
        email = normalize_email(new_email)
        policy = self._policy
        await self._limiter.acquire(
            [Counter(f"ec:user:{user_id}", policy.change_requests, policy.window_seconds)]
        )
        index_tokens = await self._crypto.blind_index(
            email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
        )
        token = self._tokens.new_token()
        hours = max(1, policy.change_seconds // 3600)
        # Both emails and the sealed address are made whatever the lookup finds: same work.
        # The new address and its link are the requester's (their subject key); the notice
        # goes to whoever holds the address, not known yet (no subject; queued naming them).
        [email_ct] = await self._crypto.encrypt(
            [(email.encode(), pii_aad(user_id, NEW_EMAIL_FIELD))], subject=user_subject(user_id)
        )
        link_mail, in_use_mail = await self._mail.seal_many(
            [
                email_change_email(to=email, link=policy.link(token), hours=hours).for_user(
                    user_id
                ),
                address_in_use_email(to=email),
            ]
        )
        notice_key = "email-in-use:" + self._local_keys.email_throttle_key(email)
        queued = False
        async with self._store.transaction() as tx:
            now = self._clock.now()
            user = await tx.user(user_id)
            if user is None:
                raise NotSignedIn()
            # Before the lookup's branch: what this request changes must not depend on
            # whether the address is taken (an earlier link surviving would tell).
            await retire_email_changes(tx, user_id, now)
            holder = await tx.user_by_email_index(index_tokens)
            outcome = "requested" if holder is None else "own_address"
            if holder is None and link_mail is not None:
                await self._tokens.issue(
                    tx,
                    token=token,
                    user_id=user_id,
                    lifetime=timedelta(seconds=policy.change_seconds),
                    retire_siblings=False,  # retired above, whatever the lookup found
                    values={
                        "requested_ip": clip_optional(client.ip, IP_CHARS),
                        "new_email_ct": email_ct,
                        "new_email_index": index_tokens[0],
                        "session_id": session_id,
                    },
                )
                await self._mail.enqueue(tx, link_mail)
                queued = True
            elif holder is not None and holder.id != user_id:
                outcome = "email_in_use"
                # The owner hears of it (once per window); the requester learns nothing.
                if in_use_mail is not None and await self._throttle.notice_allowed(notice_key):
                    await self._mail.enqueue(tx, in_use_mail, user_id=holder.id)
                    queued = True
            await tx.emit(
                SecurityEvent(
                    type="email.change_requested",
                    occurred_at=now,
                    actor=f"user:{user_id}",
                    subject=user_id,
                    ip=client.ip,
                    device=client.device,
                    outcome="success" if outcome == "requested" else "failure",
                    reason=None if outcome == "requested" else outcome,
                )
            )
        if queued:
            self._mail.notify()

    async def confirm(self, *, token: str, pending: PendingToken, client: ClientInfo) -> None:
        """Consumes an email-change link and moves the login address (see the module doc)."""
        user_id = pending.user_id
        async with self._store.transaction() as tx:
            user = await tx.user(user_id)
        if user is None or pending.new_email_ct is None or pending.new_email_index is None:
            await self._failed(client, user_id, "invalid")
        new_plain, old_plain = await self._crypto.decrypt(
            [
                (pending.new_email_ct, pii_aad(user_id, NEW_EMAIL_FIELD)),
                (user.email_ct, pii_aad(user_id, "email")),
            ]
        )
        new_email, old_email = new_plain.decode(), old_plain.decode()
        index_tokens = await self._crypto.blind_index(
            new_email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
        )
        if pending.new_email_index not in index_tokens:  # sealed address and index disagree
            await self._failed(client, user_id, "invalid")
        [new_ct] = await self._crypto.encrypt(
            [(new_plain, pii_aad(user_id, "email"))], subject=user_subject(user_id)
        )
        told = await self._notices.prepare(
            EMAIL_CHANGED,
            user_id=user_id,
            to=old_email,
            client=client,
            details={"new_email": masked_email(new_email)},
        )
        try:
            async with self._store.transaction() as tx:
                now = self._clock.now()
                # Auth's lock order: the user row before the token (exclusive: the address
                # moves), so a path that holds the row and then retires change links (a
                # password change, a first proof) makes this wait, not deadlock.
                await SessionRecords(tx).lock_user(user_id, exclusive=True)
                redeemed = await self._tokens.redeem(tx, token, retire_siblings=True, owner=user_id)
                if redeemed is None:  # lost a race for it, or replaced meanwhile
                    outcome: str | AddressProof = "invalid"
                elif not await self._session_live(tx, pending, now):
                    outcome = "session_ended"  # the token stays used: commit that, refuse
                    await self._emit_failure(tx, user_id, client, "session_ended", now)
                elif await self._taken(tx, index_tokens, user_id):
                    outcome = "email_in_use"  # the token stays used: commit that, then refuse
                    await self._emit_failure(tx, user_id, client, outcome, now)
                else:
                    outcome = await self._move(
                        tx,
                        user_id=user_id,
                        old_index=user.email_index,
                        new_index=index_tokens[0],
                        new_ct=new_ct,
                        client=client,
                        now=now,
                    )
                    await self._notices.enqueue(tx, told)
        except (IntegrityError, _AddressMoved):
            # A sign-up or another change took the address (unique index) or moved this
            # account between our read and write: nothing was written, the link still stands.
            raise EmailUnavailable() from None
        if outcome == "invalid":
            await self._failed(client, user_id, "invalid")
        if outcome == "email_in_use":
            raise EmailUnavailable()
        if outcome == "session_ended":
            raise InvalidVerificationLink()
        assert isinstance(outcome, AddressProof)
        await outcome.announce(self._sessions)
        self._notices.notify()

    async def _session_live(
        self, tx: AuthTransaction, pending: PendingToken, now: datetime
    ) -> bool:
        """Whether the session that requested the change still lives (a link from before
        migration 0010 names none: the events that retire change links still cover it)."""
        if pending.session_id is None:
            return True
        live = await SessionRecords(tx).sessions_of(pending.user_id, now)
        return any(s.id == pending.session_id for s in live)

    async def _taken(self, tx: AuthTransaction, index_tokens: list[str], user_id: str) -> bool:
        holder = await tx.user_by_email_index(index_tokens)
        return holder is not None and holder.id != user_id

    async def _move(
        self,
        tx: AuthTransaction,
        *,
        user_id: str,
        old_index: str,
        new_index: str,
        new_ct: bytes,
        client: ClientInfo,
        now: datetime,
    ) -> AddressProof:
        # The proof first: a first proof ends the sessions made before it (rule 2).
        proof = await prove_address(
            tx, user_id, now=now, sessions=self._sessions, client=client, via="email_change"
        )
        moved = await tx.conn.execute(
            update(users)
            .where(users.c.id == user_id, users.c.email_index == old_index)
            .values(email_ct=new_ct, email_index=new_index, email_verified_at=now)
        )
        if int(moved.rowcount) != 1:
            raise _AddressMoved()
        for links in self._old_address_links:
            await links.retire(tx, user_id)
        await tx.emit(
            SecurityEvent(
                type="email.changed",
                occurred_at=now,
                actor=f"user:{user_id}",
                subject=user_id,
                ip=client.ip,
                device=client.device,
                details={"first_proof": proof.first},
            )
        )
        return proof

    async def _emit_failure(
        self, tx: AuthTransaction, user_id: str, client: ClientInfo, reason: str, now: datetime
    ) -> None:
        await tx.emit(
            SecurityEvent(
                type="email.change_failed",
                occurred_at=now,
                actor="anonymous",
                subject=user_id,
                ip=client.ip,
                device=client.device,
                outcome="failure",
                reason=reason,
            )
        )

    async def _failed(self, client: ClientInfo, user_id: str, reason: str) -> NoReturn:
        async with self._store.transaction() as tx:
            await self._emit_failure(tx, user_id, client, reason, self._clock.now())
        raise InvalidVerificationLink()
