"""Asking for a password-reset link: always 202, the same work whoever asks about whom.

For a known, an unknown, a disabled and a throttled email alike: one blind-index call, the
same Redis round trips (known client, per-client limit, per-email limits), one read of the
user, one sealed email (a decoy where none goes out), then one transaction of the same
statements in the same order (retire the user's older reset tokens, insert the token, queue
the email, record the event). Where there is no one to write to, the UPDATE matches no row and
the INSERTs select none (links/equal_work.py). Mail goes through the outbox, never inline, so
the answer's timing says nothing about delivery.

Limits (SECURITY.md 10): per client (IPv4 address or IPv6 /64) a refusal is 429 rate_limited,
which says nothing about any email. Per (email, client) and per email from everywhere, a
request over the limit still answers 202 and sends nothing: the owner's inbox can't be
flooded, and the answer doesn't tell a stranger that an address is being targeted. A client
that signed in to the account before is exempt from the per-email cap (strangers spending it
must not lock its owner out of recovery); its other limits hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT, normalize_email
from palisade.auth.bounded import IP_CHARS, clip_optional
from palisade.auth.errors import Throttled
from palisade.auth.links.equal_work import insert_nothing
from palisade.auth.links.password_reset import reset_link, reset_tokens
from palisade.auth.links.tables import PASSWORD_RESET, account_tokens
from palisade.auth.local_keys import LocalKeys
from palisade.auth.mail import MailQueue, SealedEmail, mail_outbox
from palisade.auth.mail.templates import password_reset_email, seal_or_decoy
from palisade.auth.sessions.manager import ClientInfo
from palisade.auth.sessions.tokens import token_hash
from palisade.auth.store import AuthStore, AuthTransaction, UserRow
from palisade.auth.throttle import Counter, CounterLimiter, LoginThrottle
from palisade.common.client_text import client_bucket
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.outbox import SecurityEvent

# No user has this id (ids are usr_<32 hex>): the statements that stand in for a real
# account's match no row.
NO_USER = "usr_none"


@dataclass(frozen=True)
class ResetRequestLimits:
    token_seconds: int
    email_ip_requests: int  # per (email, client): what one stranger can spend of an email's
    email_requests: int  # per email from every client
    ip_requests: int  # per client, whatever the emails
    window_seconds: int


class ResetRequests:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        mail: MailQueue,
        limiter: CounterLimiter,
        throttle: LoginThrottle,
        local_keys: LocalKeys,
        limits: ResetRequestLimits,
        public_base_url: str,
        clock: Clock,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._mail = mail
        self._limiter = limiter
        self._throttle = throttle
        self._local_keys = local_keys
        self._limits = limits
        self._public_base_url = public_base_url
        self._clock = clock
        self._tokens = reset_tokens(clock)

    def _client_counters(self, ip: str | None) -> list[Counter]:
        bucket = client_bucket(ip)  # an IPv4 address or an IPv6 /64
        if not bucket:
            return []
        return [Counter(f"pr:ip:{bucket}", self._limits.ip_requests, self._limits.window_seconds)]

    def _email_counters(self, email_key: str, ip: str | None, *, known: bool) -> list[Counter]:
        limits = self._limits
        counters = []
        if not known:
            counters.append(
                Counter(f"pr:email:{email_key}", limits.email_requests, limits.window_seconds)
            )
        bucket = client_bucket(ip)
        if bucket:
            counters.append(
                Counter(
                    f"pr:email-ip:{email_key}:{bucket}",
                    limits.email_ip_requests,
                    limits.window_seconds,
                )
            )
        return counters

    async def request(self, *, email: str, client: ClientInfo) -> None:
        """Queues a reset email if the address has an active account and is within its
        limits; otherwise does the same work and sends nothing. Raises InvalidEmail for a
        malformed address (says nothing about any account) and Throttled past the per-client
        limit."""
        email = normalize_email(email)
        index = await self._crypto.blind_index(
            email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
        )
        # A stable key (survives index-key rotation); Redis never sees the email.
        email_key = self._local_keys.email_throttle_key(email)
        known_client = await self._throttle.is_known_client(email_key, client.ip)
        await self._limiter.acquire(self._client_counters(client.ip))  # 429 past it
        try:
            await self._limiter.acquire(
                self._email_counters(email_key, client.ip, known=known_client)
            )
            throttled = False
        except Throttled:
            throttled = True  # answered as usual; nothing is sent
        async with self._store.transaction() as tx:
            user = await tx.user_by_email_index(index)
        refusal = _refusal(user, throttled)
        token = self._tokens.new_token()
        message = password_reset_email(
            to=email,
            link=reset_link(self._public_base_url, token),
            minutes=self._limits.token_seconds // 60,
        )
        if user is not None:
            message = message.for_user(user.id)  # sealed under the user's subject key
        sealed = await seal_or_decoy(self._mail, message, deliver=refusal is None)
        if sealed is None and refusal is None:
            refusal = "undeliverable"  # an address the mail layer can't carry (logged)
        async with self._store.transaction() as tx:
            if user is not None and sealed is not None:
                await self._issue(tx, user.id, token, sealed, client)
            else:
                await self._same_work(tx, token, client)
            await tx.emit(
                SecurityEvent(
                    type="password.reset_requested",
                    occurred_at=self._clock.now(),
                    actor="anonymous",
                    subject=user.id if user is not None else None,
                    ip=client.ip,
                    device=client.device,
                    outcome="success" if refusal is None else "failure",
                    reason=refusal,  # in the security log only, never in the answer
                )
            )
        if sealed is not None:
            self._mail.notify()

    async def _issue(
        self, tx: AuthTransaction, user_id: str, token: str, sealed: SealedEmail, client: ClientInfo
    ) -> None:
        await self._tokens.issue(
            tx,
            token=token,
            user_id=user_id,
            lifetime=timedelta(seconds=self._limits.token_seconds),
            retire_siblings=True,  # only the newest reset link works
            values={"requested_ip": clip_optional(client.ip, IP_CHARS)},
        )
        await self._mail.enqueue(tx, sealed)

    async def _same_work(self, tx: AuthTransaction, token: str, client: ClientInfo) -> None:
        """What _issue sends the database, matching and writing no row."""
        now = self._clock.now()
        await self._tokens.retire(tx, NO_USER)
        await insert_nothing(
            tx,
            account_tokens,
            {
                "requested_ip": clip_optional(client.ip, IP_CHARS),
                "token_hash": token_hash(token),
                "user_id": NO_USER,
                "created_at": now,
                "expires_at": now + timedelta(seconds=self._limits.token_seconds),
                "purpose": PASSWORD_RESET.name,
            },
        )
        await insert_nothing(
            tx,
            mail_outbox,
            {
                "id": f"mail_{token_hash(token).hex()[:32]}",
                "created_at": now,
                "next_attempt_at": now,
                "attempts": 0,
                "message_ct": b"",
                "user_id": NO_USER,
            },
        )


def _refusal(user: UserRow | None, throttled: bool) -> str | None:
    """Why nothing is sent (the security log's reason), or None: send."""
    if user is None:
        return "unknown_user"
    if user.disabled:
        return "disabled"
    if throttled:
        return "throttled"
    return None
