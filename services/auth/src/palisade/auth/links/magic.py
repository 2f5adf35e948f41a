"""Magic links: a one-time sign-in link by email.

Requesting always answers the same way (202, same work: a blind-index lookup and one sealed
email, real or not) for known and unknown emails. The token comes from the single-use token
core (single_use.py): 256 bits from the CSPRNG, stored as SHA-256, valid 15 minutes and used
up by one conditional UPDATE. The link opens a confirm page (the gateway's); only its POST
redeems, so link scanners can't burn the token. A user with a second factor gets an mfaToken,
not a session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn
from urllib.parse import quote

from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT, normalize_email
from palisade.auth.bounded import IP_CHARS, clip_optional
from palisade.auth.errors import InvalidCredentials, InvalidMagicLink
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import MAGIC_LINK, MAGIC_LINK_TABLE
from palisade.auth.local_keys import LocalKeys
from palisade.auth.mail import MailQueue
from palisade.auth.mail.templates import magic_link_email, seal_or_decoy
from palisade.auth.mfa.login import LoginResult, MfaLogins
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.store import AuthStore, AuthTransaction
from palisade.auth.throttle import Counter, CounterLimiter, LoginThrottle
from palisade.common.client_text import client_bucket
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.errors import PalisadeError
from palisade.common.outbox import SecurityEvent

CONFIRM_PATH = "/auth/magic-link"


@dataclass(frozen=True)
class MagicLinkPolicy:
    public_base_url: str
    token_seconds: int
    email_requests: int  # per email from all clients: higher than per (email, client)
    ip_requests: int
    window_seconds: int
    # Per (email, client): what one stranger can spend of an email's allowance.
    email_ip_requests: int = 5


class MagicLinks:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        sessions: SessionManager,
        mfa: MfaLogins,
        mail: MailQueue,
        limiter: CounterLimiter,
        throttle: LoginThrottle,
        local_keys: LocalKeys,
        policy: MagicLinkPolicy,
        clock: Clock,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._sessions = sessions
        self._mfa = mfa
        self._mail = mail
        self._limiter = limiter
        self._throttle = throttle
        self._local_keys = local_keys
        self._policy = policy
        self._clock = clock
        self._tokens = SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK, clock=clock)

    def _counters(self, email_key: str, ip: str | None, *, known: bool) -> list[Counter]:
        policy = self._policy
        counters = []
        if not known:  # the owner's own client is not held back by strangers' requests
            counters.append(
                Counter(f"ml:email:{email_key}", policy.email_requests, policy.window_seconds)
            )
        bucket = client_bucket(ip)  # an IPv4 address or an IPv6 /64
        if bucket:
            counters += [
                Counter(f"ml:ip:{bucket}", policy.ip_requests, policy.window_seconds),
                Counter(
                    f"ml:email-ip:{email_key}:{bucket}",
                    policy.email_ip_requests,
                    policy.window_seconds,
                ),
            ]
        return counters

    def _link(self, token: str) -> str:
        return f"{self._policy.public_base_url.rstrip('/')}{CONFIRM_PATH}?token={quote(token)}"

    async def request(self, *, email: str, client: ClientInfo) -> None:
        email = normalize_email(email)
        tokens = await self._crypto.blind_index(
            email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
        )
        # A stable key (survives index-key rotation); Redis never sees the email.
        email_key = self._local_keys.email_throttle_key(email)
        # A client that logged in to this account before passes the per-email cap, which
        # strangers on a few networks could otherwise spend; its per-IP limits still hold.
        known_client = await self._throttle.is_known_client(email_key, client.ip)
        await self._limiter.acquire(self._counters(email_key, client.ip, known=known_client))
        async with self._store.transaction() as tx:
            user = await tx.user_by_email_index(tokens)
        known = user is not None and not user.disabled
        token = self._tokens.new_token()
        message = magic_link_email(
            to=email, link=self._link(token), minutes=self._policy.token_seconds // 60
        )
        sealed = await seal_or_decoy(self._mail, message, deliver=known)
        async with self._store.transaction() as tx:
            now = self._clock.now()
            if user is not None and sealed is not None:
                await self._tokens.issue(
                    tx,
                    token=token,
                    user_id=user.id,
                    lifetime=timedelta(seconds=self._policy.token_seconds),
                    retire_siblings=False,  # earlier links stay valid until one is used
                    values={"requested_ip": clip_optional(client.ip, IP_CHARS)},  # client-supplied
                )
                await self._mail.enqueue(tx, sealed)
            await tx.emit(
                SecurityEvent(
                    type="magic_link.requested",
                    occurred_at=now,
                    actor="anonymous",
                    subject=user.id if user else None,
                    ip=client.ip,
                    device=client.device,
                    outcome="success" if known else "failure",
                    reason=None if known else ("unknown_user" if user is None else "disabled"),
                )
            )
        if sealed is not None:
            self._mail.notify()

    async def redeem(self, *, token: str, client: ClientInfo) -> LoginResult:
        try:
            self._tokens.check(token)
        except PalisadeError:
            await self._failed(client, "malformed")
        async with self._store.transaction() as tx:
            # The user's other links die with this one: one sign-in per email round.
            redeemed = await self._tokens.redeem(tx, token, retire_siblings=True)
            if redeemed is not None:
                return await self._sign_in(tx, redeemed.user_id, client)
        # Unknown, used or expired: one answer; the caller learns nothing more.
        await self._failed(client, "invalid")

    async def _sign_in(self, tx: AuthTransaction, user_id: str, client: ClientInfo) -> LoginResult:
        user = await tx.user(user_id)
        if user is None or user.disabled:
            raise InvalidCredentials()
        if await self._mfa.required(tx, user_id):
            return await self._mfa.begin(
                tx, user_id=user_id, first_factor="magic_link", remember_me=False, client=client
            )
        return await self._sessions.sign_in(
            tx, user_id=user_id, remember_me=False, client=client, method="magic_link"
        )

    async def _failed(self, client: ClientInfo, reason: str) -> NoReturn:
        async with self._store.transaction() as tx:
            await tx.emit(
                SecurityEvent(
                    type="session.login_failed",
                    occurred_at=self._clock.now(),
                    actor="anonymous",
                    ip=client.ip,
                    device=client.device,
                    outcome="failure",
                    reason=f"magic_link_{reason}",
                )
            )
        raise InvalidMagicLink()
