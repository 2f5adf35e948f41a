"""Email verification: the link a sign-up sends (and a signed-in user can have sent again), and
the one confirm route that both it and an email change's link land on.

- A link is `{public base url}/auth/verify-email?token=plsd_ev_…`, from the single-use token
  core (links/single_use.py, table account_tokens): 256 bits, stored as SHA-256, valid 24 h
  by default, used up by one conditional UPDATE. Issuing one retires the user's earlier ones,
  so only the newest link works.
- Confirming proves the address (accounts/address_proof.py): the first proof ends every
  session made before it, which undoes a pre-hijacked account's sessions.
- Resending is rate limited per user (429 rate_limited, with Retry-After): the caller is the
  signed-in owner, so a clear answer reveals nothing, and a silent drop would leave a person
  waiting for an email that never comes. An address already verified gets no email (202).
- Confirm route: a token of the right prefix is looked at once (no consumption) to tell a
  verification from an email change; the change's own flow (accounts/email_change.py) then
  consumes it. Either way the confirm locks the token's owner's user row before it uses the
  token up (auth's lock order: the user row first). Any token that is unknown, used,
  expired, replaced or malformed gets one answer, 400 invalid_verification_link.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn, Protocol
from urllib.parse import quote

from sqlalchemy import select

from palisade.auth.accounts.address_proof import prove_address
from palisade.auth.bounded import IP_CHARS, clip_optional
from palisade.auth.errors import InvalidVerificationLink, NotSignedIn
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import (
    ACCOUNT_TOKENS,
    EMAIL_CHANGE,
    EMAIL_VERIFICATION,
    account_tokens,
)
from palisade.auth.mail import MailQueue, OutgoingEmail, SealedEmail
from palisade.auth.mail.templates import verification_email
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.sessions.store import SessionRecords
from palisade.auth.store import AuthStore, AuthTransaction, users
from palisade.auth.throttle import Counter, CounterLimiter
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient
from palisade.common.errors import PalisadeError
from palisade.common.outbox import SecurityEvent

VERIFY_PATH = "/auth/verify-email"


@dataclass(frozen=True)
class EmailLinkPolicy:
    public_base_url: str
    verification_seconds: int
    change_seconds: int
    resends: int  # verification emails a user may have sent again per window
    change_requests: int  # email-change requests per user per window
    window_seconds: int

    def link(self, token: str) -> str:
        return f"{self.public_base_url.rstrip('/')}{VERIFY_PATH}?token={quote(token)}"


@dataclass(frozen=True)
class PreparedVerification:
    """A verification link's token and its email, composed before the transaction that
    stores the token (sealing needs crypto, which a transaction must not wait on)."""

    token: str
    email: OutgoingEmail


@dataclass(frozen=True)
class PendingToken:
    """An account token as looked at before consuming it (the row may still lose a race)."""

    purpose: str
    user_id: str
    new_email_ct: bytes | None
    new_email_index: str | None
    session_id: str | None = None  # an email change's requesting session


def pii_aad(user_id: str, field: str) -> bytes:
    """The associated data of a user's sealed PII (as accounts/service.py seals it)."""
    return associated_data("auth", "user", user_id, field)


async def email_verified(tx: AuthTransaction, user_id: str) -> bool:
    verified_at = (
        await tx.conn.execute(select(users.c.email_verified_at).where(users.c.id == user_id))
    ).scalar_one_or_none()
    return verified_at is not None


class EmailVerifications:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        sessions: SessionManager,
        mail: MailQueue,
        limiter: CounterLimiter,
        policy: EmailLinkPolicy,
        clock: Clock,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._sessions = sessions
        self._mail = mail
        self._limiter = limiter
        self._policy = policy
        self._clock = clock
        self._tokens = SingleUseTokens(
            table=ACCOUNT_TOKENS, purpose=EMAIL_VERIFICATION, clock=clock
        )
        # Set by the composition root: the confirm route hands email changes to it.
        self.changes: EmailChangeConfirmer | None = None

    @property
    def tokens(self) -> SingleUseTokens:
        return self._tokens

    def prepare(self, to: str, *, user_id: str) -> PreparedVerification:
        """The link and its email to `to`, the address of user_id's account (the email is
        sealed under that user's subject key)."""
        token = self._tokens.new_token()
        hours = max(1, self._policy.verification_seconds // 3600)
        email = verification_email(to=to, link=self._policy.link(token), hours=hours)
        return PreparedVerification(token, email.for_user(user_id))

    async def issue_in(
        self,
        tx: AuthTransaction,
        *,
        user_id: str,
        prepared: PreparedVerification,
        sealed: SealedEmail,
        client: ClientInfo,
        now: datetime,
    ) -> None:
        """Stores the link (retiring the user's earlier ones) and queues its email in tx."""
        await self._tokens.issue(
            tx,
            token=prepared.token,
            user_id=user_id,
            lifetime=timedelta(seconds=self._policy.verification_seconds),
            retire_siblings=True,  # only the newest link works
            values={"requested_ip": clip_optional(client.ip, IP_CHARS)},
        )
        await self._mail.enqueue(tx, sealed)
        await tx.emit(
            SecurityEvent(
                type="email.verification_sent",
                occurred_at=now,
                actor=f"user:{user_id}",
                subject=user_id,
                ip=client.ip,
                device=client.device,
            )
        )

    async def resend(self, *, user_id: str, client: ClientInfo) -> None:
        """A new link for the signed-in user (the earlier one stops working), unless the
        address is verified already. Raises Throttled past the per-user allowance."""
        policy = self._policy
        await self._limiter.acquire(
            [Counter(f"ev:resend:{user_id}", policy.resends, policy.window_seconds)]
        )
        async with self._store.transaction() as tx:
            user = await tx.user(user_id)
            verified = user is not None and await email_verified(tx, user_id)
        if user is None:
            raise NotSignedIn()
        if verified:
            return  # nothing to prove; the answer is the same 202
        [email] = await self._crypto.decrypt([(user.email_ct, pii_aad(user_id, "email"))])
        prepared = self.prepare(email.decode(), user_id=user_id)
        [sealed] = await self._mail.seal_many([prepared.email])
        if sealed is None:
            return  # an address the mail layer can't carry (logged by the mail layer)
        async with self._store.transaction() as tx:
            current = await tx.user(user_id)
            # The address may have changed or been proven meanwhile: then this link is moot.
            if current is None or current.email_index != user.email_index:
                return
            if await email_verified(tx, user_id):
                return
            await self.issue_in(
                tx,
                user_id=user_id,
                prepared=prepared,
                sealed=sealed,
                client=client,
                now=self._clock.now(),
            )
        self._mail.notify()

    async def confirm(self, *, token: str, client: ClientInfo) -> None:
        """Consumes a verification or email-change link (once)."""
        try:
            digest = self._tokens.check(token)
        except PalisadeError:
            await self._failed(client, "malformed")
        async with self._store.transaction() as tx:
            pending = await self._pending(tx, digest, self._clock.now())
        if pending is None:
            await self._failed(client, "invalid")
        if pending.purpose == EMAIL_CHANGE.name:
            if self.changes is None:
                raise RuntimeError("email changes are not wired to the confirm route")
            await self.changes.confirm(token=token, pending=pending, client=client)
            return
        async with self._store.transaction() as tx:
            # Auth's lock order: the user row (named by the look above, which took no lock)
            # before the token; exclusive, since a first proof writes it. Using the token up
            # first and then waiting for the row would deadlock against a path that holds the
            # row and then retires the user's links (a password change, a sibling's confirm).
            await SessionRecords(tx).lock_user(pending.user_id, exclusive=True)
            redeemed = await self._tokens.redeem(
                tx, token, retire_siblings=True, owner=pending.user_id
            )
            if redeemed is not None:
                proof = await prove_address(
                    tx,
                    redeemed.user_id,
                    now=self._clock.now(),
                    sessions=self._sessions,
                    client=client,
                    via="email_verification",
                )
        if redeemed is None:  # lost the race for it
            await self._failed(client, "invalid")
        await proof.announce(self._sessions)

    async def _pending(
        self, tx: AuthTransaction, digest: bytes, now: datetime
    ) -> PendingToken | None:
        row = (
            await tx.conn.execute(
                select(
                    account_tokens.c.purpose,
                    account_tokens.c.user_id,
                    account_tokens.c.new_email_ct,
                    account_tokens.c.new_email_index,
                    account_tokens.c.session_id,
                ).where(
                    account_tokens.c.token_hash == digest,
                    account_tokens.c.purpose.in_([EMAIL_VERIFICATION.name, EMAIL_CHANGE.name]),
                    account_tokens.c.consumed_at.is_(None),
                    account_tokens.c.expires_at > now,
                )
            )
        ).first()
        if row is None:
            return None
        return PendingToken(
            purpose=row.purpose,
            user_id=row.user_id,
            new_email_ct=None if row.new_email_ct is None else bytes(row.new_email_ct),
            new_email_index=row.new_email_index,
            session_id=row.session_id,
        )

    async def _failed(self, client: ClientInfo, reason: str) -> NoReturn:
        async with self._store.transaction() as tx:
            await tx.emit(
                SecurityEvent(
                    type="email.verification_failed",
                    occurred_at=self._clock.now(),
                    actor="anonymous",
                    ip=client.ip,
                    device=client.device,
                    outcome="failure",
                    reason=reason,
                )
            )
        raise InvalidVerificationLink()


class EmailChangeConfirmer(Protocol):
    """What the confirm route needs of email changes (accounts/email_change.py)."""

    async def confirm(self, *, token: str, pending: PendingToken, client: ClientInfo) -> None: ...
