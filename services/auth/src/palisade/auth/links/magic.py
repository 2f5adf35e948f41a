"""Magic links: a one-time sign-in link by email.

Requesting always answers the same way (202, same work: a blind-index lookup and one sealed
email, real or not) for known and unknown emails. The token comes from the single-use token
core (single_use.py): 256 bits from the CSPRNG, stored as SHA-256, valid 15 minutes and used
up by one conditional UPDATE. The link opens a confirm page (the gateway's); only its POST
redeems, so link scanners can't burn the token. A user with a second factor gets an mfaToken,
not a session. Redeeming a link proves the address (accounts/address_proof.py).

Redemption keeps auth's lock order (sessions/store.py): it locks the link's owner's user row
first, exclusively (a first proof updates that row; holding it shared would mean upgrading the
lock later), and only then the links, the user's sessions and the new session. Whatever voids
a user's links (a password change or reset, a disable) updates the user row before it retires
them, so it and a redemption wait for each other in one order only: the redemption either
finishes first or finds its link used, never a deadlock.

PKCE-style binding (RFC 7636's S256): a request may carry codeChallenge, the base64url SHA-256
of a verifier the requesting client keeps; such a link redeems only with that verifier, so a
link opened in another browser, or read from the mailbox by someone else, signs nobody in.
A wrong or missing verifier consumes nothing: the challenge is written once, with the row, and
never changes, so checking it before the core's conditional UPDATE is as good as inside it, and
the rightful client can still use the link. Such failures are counted per (link, client
network) and answer 429 past magic_link_verifier_failures in the window (a verifier has 256
bits or more when made as RFC 7636 says, so this is hygiene, not the defence).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn
from urllib.parse import quote

from sqlalchemy import select

from palisade.auth.accounts.address_proof import AddressProof, prove_address
from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT, normalize_email
from palisade.auth.bounded import IP_CHARS, clip_optional
from palisade.auth.errors import (
    AccountDisabled,
    CodeVerifierMismatch,
    CodeVerifierRequired,
    InvalidCodeChallenge,
    InvalidCodeVerifier,
    InvalidCredentials,
    InvalidMagicLink,
)
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import MAGIC_LINK, MAGIC_LINK_TABLE, magic_links
from palisade.auth.local_keys import LocalKeys
from palisade.auth.mail import MailQueue
from palisade.auth.mail.templates import magic_link_email, seal_or_decoy
from palisade.auth.mfa.login import LoginResult, MfaLogins
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.sessions.store import SessionRecords
from palisade.auth.store import AuthStore, AuthTransaction
from palisade.auth.throttle import Counter, CounterLimiter, LoginThrottle
from palisade.common.client_text import client_bucket
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.errors import PalisadeError
from palisade.common.outbox import SecurityEvent

CONFIRM_PATH = "/auth/magic-link"
# S256 challenge: base64url, no padding, of a 32-byte digest. Verifier: RFC 7636 4.1.
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")


def code_challenge(verifier: str) -> str:
    """The S256 challenge of a verifier (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_code_challenge(challenge: str) -> str | None:
    """None for no challenge; the challenge if well-formed; raises InvalidCodeChallenge."""
    if not challenge:
        return None
    if not _CHALLENGE.fullmatch(challenge):
        raise InvalidCodeChallenge()
    return challenge


def verifier_matches(verifier: str, challenge: str) -> bool:
    """Constant-time comparison of the verifier's S256 challenge with the stored one."""
    return hmac.compare_digest(code_challenge(verifier).encode(), challenge.encode("ascii"))


@dataclass(frozen=True)
class MagicLinkPolicy:
    public_base_url: str
    token_seconds: int
    email_requests: int  # per email from all clients: higher than per (email, client)
    ip_requests: int
    window_seconds: int
    # Per (email, client): what one stranger can spend of an email's allowance.
    email_ip_requests: int = 5
    # Wrong or missing verifiers for a bound link, per (link, client network).
    verifier_failures: int = 5


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

    async def request(self, *, email: str, client: ClientInfo, code_challenge: str = "") -> None:
        email = normalize_email(email)
        challenge = check_code_challenge(code_challenge)  # malformed: 400, before any work
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
        if user is not None:
            message = message.for_user(user.id)  # sealed under the user's subject key
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
                    values={
                        "requested_ip": clip_optional(client.ip, IP_CHARS),  # client-supplied
                        "code_challenge": challenge,
                    },
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

    async def redeem(
        self, *, token: str, client: ClientInfo, code_verifier: str = ""
    ) -> LoginResult:
        try:
            digest = self._tokens.check(token)
        except PalisadeError:
            await self._failed(client, "malformed")
        if code_verifier and not _VERIFIER.fullmatch(code_verifier):
            raise InvalidCodeVerifier()
        await self._check_binding(digest, code_verifier, client)
        proof: AddressProof | None = None
        try:
            async with self._store.transaction() as tx:
                await self._lock_owner(tx, digest)
                # The user's other links die with this one: one sign-in per email round.
                redeemed = await self._tokens.redeem(tx, token, retire_siblings=True)
                if redeemed is not None:
                    proof, result = await self._sign_in(tx, redeemed.user_id, client)
        except AccountDisabled:
            await self._failed(client, "account_disabled", AccountDisabled)
        if proof is not None:
            await proof.announce(self._sessions)  # after commit: pre-proof sessions ended
            return result
        # Unknown, used or expired: one answer; the caller learns nothing more.
        await self._failed(client, "invalid")

    async def _lock_owner(self, tx: AuthTransaction, digest: bytes) -> None:
        """Locks the user row of the link's owner (if the link exists, used or not), before
        the link or anything else of theirs is touched: see the module doc."""
        if not tx.locks_rows:
            return  # SQLite: BEGIN IMMEDIATE already runs one writer at a time
        owner = await self._tokens.owner(tx, digest)
        if owner is not None:
            await SessionRecords(tx).lock_user(owner, exclusive=True)

    async def _check_binding(self, digest: bytes, verifier: str, client: ClientInfo) -> None:
        """Raises unless the link is unbound or the verifier is its challenge's. Consumes
        nothing: an unknown, used or expired link passes here and fails in redeem."""
        async with self._store.transaction() as tx:
            challenge = await self._challenge(tx, digest, self._clock.now())
        if challenge is None:
            return
        bucket = client_bucket(client.ip) or "unknown"
        failures = Counter(
            f"ml:verifier:{digest.hex()}:{bucket}",
            self._policy.verifier_failures,
            self._policy.window_seconds,
        )
        await self._limiter.check([failures])
        if verifier and verifier_matches(verifier, challenge):
            return
        await self._limiter.hit([failures])
        reason = "verifier_mismatch" if verifier else "verifier_required"
        await self._failed(
            client, reason, CodeVerifierMismatch if verifier else CodeVerifierRequired
        )

    async def _challenge(self, tx: AuthTransaction, digest: bytes, now: datetime) -> str | None:
        """The live link's code challenge (None: unbound, or no live link)."""
        value = (
            await tx.conn.execute(
                select(magic_links.c.code_challenge).where(
                    magic_links.c.token_hash == digest,
                    magic_links.c.used_at.is_(None),
                    magic_links.c.expires_at > now,
                )
            )
        ).scalar_one_or_none()
        return None if value is None else str(value)

    async def _sign_in(
        self, tx: AuthTransaction, user_id: str, client: ClientInfo
    ) -> tuple[AddressProof, LoginResult]:
        user = await tx.user(user_id)
        if user is None:
            raise InvalidCredentials()
        if user.disabled:  # the link verified; raising rolls its redemption back
            raise AccountDisabled()
        # The link reached the address: proven. Before the new session, which must outlive
        # a first proof's end of the earlier ones.
        proof = await prove_address(
            tx,
            user_id,
            now=self._clock.now(),
            sessions=self._sessions,
            client=client,
            via="magic_link",
        )
        return proof, await self._sign_in_proven(tx, user_id, client)

    async def _sign_in_proven(
        self, tx: AuthTransaction, user_id: str, client: ClientInfo
    ) -> LoginResult:
        if await self._mfa.required(tx, user_id):
            return await self._mfa.begin(
                tx, user_id=user_id, first_factor="magic_link", remember_me=False, client=client
            )
        return await self._sessions.sign_in(
            tx, user_id=user_id, remember_me=False, client=client, method="magic_link"
        )

    async def _failed(
        self,
        client: ClientInfo,
        reason: str,
        error: type[PalisadeError] = InvalidMagicLink,
    ) -> NoReturn:
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
        raise error()
