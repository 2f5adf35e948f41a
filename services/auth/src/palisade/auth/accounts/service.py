"""Sign-up, password login, password change and the caller's profile.

Enumeration: for a known and an unknown email, sign-up and login do the same work (a
blind-index lookup, one Argon2id computation) and give the same answer. The reason a login
failed is recorded only in the security log.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from typing import NoReturn

from sqlalchemy import bindparam, select

from palisade.auth.accounts.address_proof import retire_email_changes
from palisade.auth.accounts.profile_read import read_profile
from palisade.auth.accounts.verification import (
    EmailVerifications,
    PreparedVerification,
    email_verified,
)
from palisade.auth.errors import AccountDisabled, InvalidCredentials, InvalidEmail, InvalidName
from palisade.auth.links.single_use import SingleUseTokens
from palisade.auth.links.tables import MAGIC_LINK, MAGIC_LINK_TABLE
from palisade.auth.local_keys import LocalKeys
from palisade.auth.mail import MailQueue, SealedEmail
from palisade.auth.mail.account_notices import PASSWORD_CHANGED, AccountNotices, PendingNotice
from palisade.auth.mail.templates import (
    existing_account_email,
    unverified_account_email,
)
from palisade.auth.mfa.login import LoginResult, MfaLogins
from palisade.auth.mfa.store import MfaRecords, totp_credentials
from palisade.auth.passwords.hashing import PasswordHasher
from palisade.auth.passwords.policy import check_length, check_new_password
from palisade.auth.sessions.manager import ClientInfo, SessionManager, SignInFacts
from palisade.auth.sessions.new_networks import remember_network
from palisade.auth.sessions.revocation import RevocationNotice
from palisade.auth.store import (
    AuthStore,
    DuplicateEmail,
    UserRow,
    email_index_params,
    memberships,
    user_by_email_index_statement,
    user_from,
)
from palisade.auth.subjects import user_subject
from palisade.auth.throttle import LoginThrottle
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.errors import PalisadeError
from palisade.common.outbox import SecurityEvent

EMAIL_INDEX_CONTEXT = b"auth/user.email"
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
MAX_EMAIL_LENGTH = 254
# Control, format, surrogate and line/paragraph-separator characters.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
MAX_NAME_LENGTH = 200
# A password is checked against the hash it was read with; if that hash changes before the
# session is stored (a re-hash or a change racing it), it is read and checked again, this often.
_VERIFY_ROUNDS = 3
# After a login has locked the user row: whether a second factor is due (what
# MfaLogins.required reads: a confirmed TOTP credential) and the user's first workspace (what
# SessionManager.sign_in starts the session in, AuthTransaction.primary_membership), as one
# statement instead of two.
_LOGIN_FACTS = select(
    select(totp_credentials.c.confirmed_at.is_not(None))
    .where(totp_credentials.c.user_id == bindparam("user_id"))
    .scalar_subquery(),
    select(memberships.c.workspace_id)
    .where(memberships.c.user_id == bindparam("user_id"))
    .order_by(memberships.c.created_at, memberships.c.workspace_id)
    .limit(1)
    .scalar_subquery(),
)


def normalize_email(email: str) -> str:
    if len(email) > 4 * MAX_EMAIL_LENGTH:  # before NFKC, which can expand text
        raise InvalidEmail()
    normalized = unicodedata.normalize("NFKC", email).strip().lower()
    if len(normalized) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(normalized):
        raise InvalidEmail()
    if any(unicodedata.category(c) in _INVISIBLE for c in normalized):
        raise InvalidEmail()  # NUL, escapes, bidi overrides: malformed, and unsafe to show
    return normalized


def _clean_name(name: str) -> str:
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH or not cleaned.isprintable():
        raise InvalidName()
    return cleaned


def _pii_aad(user_id: str, field: str) -> bytes:
    return associated_data("auth", "user", user_id, field)


@dataclass(frozen=True)
class SignUpResult:
    user_id: str
    workspace_id: str


@dataclass(frozen=True)
class Profile:
    user_id: str
    email: str
    name: str
    workspace_id: str
    role: str
    totp_enabled: bool
    passkeys: int
    email_verified: bool = False


class Accounts:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        hasher: PasswordHasher,
        sessions: SessionManager,
        throttle: LoginThrottle,
        local_keys: LocalKeys,
        mfa: MfaLogins,
        mail: MailQueue,
        notices: AccountNotices,
        public_base_url: str,
        clock: Clock,
        verifications: EmailVerifications,
    ) -> None:
        self._store = store
        self._verifications = verifications
        self._notices = notices
        self._mfa = mfa
        self._mail = mail
        self._public_base_url = public_base_url
        self._crypto = crypto
        self._hasher = hasher
        self._sessions = sessions
        self._throttle = throttle
        self._local_keys = local_keys  # throttle keys survive index-key rotation
        self._clock = clock
        # A password change retires the magic links sent before it.
        self._magic_links = SingleUseTokens(table=MAGIC_LINK_TABLE, purpose=MAGIC_LINK, clock=clock)

    async def _email_tokens(self, email: str) -> list[str]:
        """Blind-index tokens of email under every usable index key, primary first."""
        return await self._crypto.blind_index(
            email, Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
        )

    async def sign_up(
        self, *, email: str, password: str, name: str, workspace_name: str, client: ClientInfo
    ) -> SignUpResult:
        email = normalize_email(email)
        name = _clean_name(name)
        # Never derived from the user's name: workspace names are stored in plaintext.
        workspace_name = _clean_name(workspace_name or "My workspace")
        check_new_password(password, email=email)
        user_id, workspace_id = f"usr_{uuid.uuid4().hex}", f"ws_{uuid.uuid4().hex}"
        tokens = await self._email_tokens(email)
        password_hash = await self._hasher.hash(password)  # also for a known email: same cost
        # All sealed either way (same cost): a new account's verification link is queued; for
        # a taken address, the owner's notice (its own wording when the owner never proved
        # the address: the account may be someone else's pre-hijack of it).
        # The notices go to whoever holds the address, not known yet: sealed under no subject,
        # and queued naming that account (so its deletion drops them).
        verification = self._verifications.prepare(email, user_id=user_id)
        verified_notice, unverified_notice, verification_mail = await self._mail.seal_many(
            [
                existing_account_email(to=email, sign_in_url=self._public_base_url),
                unverified_account_email(to=email, sign_in_url=self._public_base_url),
                verification.email,
            ]
        )
        # Under the new user's subject key (auth/subjects.py), also for a taken address (the
        # same work; that subject then holds nothing).
        email_ct, name_ct = await self._crypto.encrypt(
            [
                (email.encode(), _pii_aad(user_id, "email")),
                (name.encode(), _pii_aad(user_id, "name")),
            ],
            subject=user_subject(user_id),
        )
        notice_key = "signup-taken:" + self._local_keys.email_throttle_key(email)
        queued = False
        for attempt in range(2):
            try:
                queued = await self._store_sign_up(
                    tokens=tokens,
                    user_id=user_id,
                    workspace_id=workspace_id,
                    workspace_name=workspace_name,
                    email_ct=email_ct,
                    name_ct=name_ct,
                    password_hash=password_hash,
                    notices=(verified_notice, unverified_notice),
                    notice_key=notice_key,
                    client=client,
                    verification=verification,
                    verification_mail=verification_mail,
                )
                break
            except DuplicateEmail:
                # A parallel sign-up took the address between the look and the insert:
                # looked again, it is a taken address like any other (never a 500).
                if attempt:
                    raise
        if queued:
            self._mail.notify()
        return SignUpResult(user_id, workspace_id)

    async def _store_sign_up(
        self,
        *,
        tokens: list[str],
        user_id: str,
        workspace_id: str,
        workspace_name: str,
        email_ct: bytes,
        name_ct: bytes,
        password_hash: str,
        notices: tuple[SealedEmail | None, SealedEmail | None],
        notice_key: str,
        client: ClientInfo,
        verification: PreparedVerification,
        verification_mail: SealedEmail | None,
    ) -> bool:
        """The new account and its verification link, or (taken address) the event and the
        owner's notice (notices: for a verified owner, for an unverified one); True if an
        email was queued. Raises DuplicateEmail if a parallel sign-up got there first."""
        async with self._store.transaction() as tx:
            now = self._clock.now()
            existing = await tx.user_by_email_index(tokens)
            if existing is not None:
                # Same answer as a new account; the owner hears of it, the caller learns nothing.
                await tx.emit(
                    SecurityEvent(
                        type="user.signup_existing_email",
                        occurred_at=now,
                        actor="anonymous",
                        subject=existing.id,
                        ip=client.ip,
                        device=client.device,
                        outcome="failure",
                        reason="email_in_use",
                    )
                )
                verified = await email_verified(tx, existing.id)
                notice = notices[0] if verified else notices[1]
                # One notice per address per window: a stranger can't flood the owner.
                if notice is not None and await self._throttle.notice_allowed(notice_key):
                    await self._mail.enqueue(tx, notice, user_id=existing.id)
                    return True
                return False
            await self._throttle.notice_allowed(notice_key, spend=False)  # the same work
            await tx.insert_user(
                user_id=user_id,
                email_index=tokens[0],
                email_ct=email_ct,
                name_ct=name_ct,
                password_hash=password_hash,
                now=now,
            )
            await tx.insert_workspace(workspace_id=workspace_id, name=workspace_name, now=now)
            await tx.insert_membership(
                workspace_id=workspace_id, user_id=user_id, role="owner", now=now
            )
            # Where the account was made counts as seen: its first login from there is no alert.
            await remember_network(tx, self._local_keys, user_id=user_id, ip=client.ip, now=now)
            await tx.emit(
                SecurityEvent(
                    type="user.signed_up",
                    occurred_at=now,
                    actor=f"user:{user_id}",
                    subject=user_id,
                    workspace_id=workspace_id,
                    ip=client.ip,
                    device=client.device,
                )
            )
            if verification_mail is None:
                return False
            await self._verifications.issue_in(
                tx,
                user_id=user_id,
                prepared=verification,
                sealed=verification_mail,
                client=client,
                now=now,
            )
            return True

    async def login(
        self, *, email: str, password: str, remember_me: bool, client: ClientInfo
    ) -> LoginResult:
        # Malformed input gets its own code: that says nothing about any account.
        email = normalize_email(email)
        check_length(password)
        tokens = await self._email_tokens(email)
        account_key = self._local_keys.email_throttle_key(email)  # stable; Redis never sees it
        await self._throttle.acquire(account_key, client.ip)  # counted before the hash
        result: LoginResult | None = None
        for _ in range(_VERIFY_ROUNDS):
            # No lock needed: the hash is checked again, locked, before the session is made.
            found = await self._store.reads.one(
                user_by_email_index_statement(len(tokens)), email_index_params(tokens)
            )
            user = None if found is None else user_from(found)
            if user is None:
                await self._hasher.burn(password)
                await self._fail(account_key, client, user, "unknown_user")
            verification = await self._hasher.verify(user.password_hash, password)
            if not verification.ok:
                await self._fail(account_key, client, user, "bad_password")
            if user.disabled:  # only after the right password: no oracle for anyone else
                await self._fail(account_key, client, user, "disabled", AccountDisabled())
            new_hash = await self._hasher.hash(password) if verification.needs_rehash else None
            result = await self._password_accepted(user, new_hash, remember_me, client)
            if result is not None:
                break
        if result is None:  # the hash kept changing while we checked it
            await self._fail(account_key, client, user, "password_changed")
        # The password was right: its throttle resets (a second factor has its own count).
        await self._throttle.accepted(account_key, client.ip)
        return result

    async def _password_accepted(
        self, user: UserRow, new_hash: str | None, remember_me: bool, client: ClientInfo
    ) -> LoginResult | None:
        """A session, or a pending second factor, in one transaction with any re-hash; None
        if the hash the password was verified against is no longer the user's (changed or
        re-hashed meanwhile: verify again). The check holds the user row until commit, so a
        password change that follows sees, and ends, the session made here."""
        async with self._store.transaction() as tx:
            locked = await tx.lock_password(user.id, user.password_hash, exclusive=bool(new_hash))
            if locked is None:
                return None
            if new_hash is not None:
                await tx.replace_password_hash(
                    user.id, user.password_hash, new_hash, self._clock.now(), changed=False
                )
            # MfaLogins.required and the first workspace, in one statement after the lock.
            totp_confirmed, workspace_id = (
                await tx.conn.execute(_LOGIN_FACTS, {"user_id": user.id})
            ).one()
            if totp_confirmed:
                return await self._mfa.begin(
                    tx,
                    user_id=user.id,
                    first_factor="password",
                    remember_me=remember_me,
                    client=client,
                )
            return await self._sessions.sign_in(
                tx,
                user_id=user.id,
                remember_me=remember_me,
                client=client,
                method="password",
                details={"rehashed": new_hash is not None},
                facts=SignInFacts(locked=locked, workspace_id=workspace_id),
            )

    async def _fail(
        self,
        account_key: str,
        client: ClientInfo,
        user: UserRow | None,
        reason: str,
        error: PalisadeError | None = None,
    ) -> NoReturn:
        async with self._store.transaction() as tx:
            await tx.emit(
                SecurityEvent(
                    type="session.login_failed",
                    occurred_at=self._clock.now(),
                    actor="anonymous",
                    subject=user.id if user else None,
                    ip=client.ip,
                    device=client.device,
                    outcome="failure",
                    reason=reason,
                )
            )
        raise error or InvalidCredentials()

    async def change_password(
        self,
        *,
        user_id: str,
        session_id: str | None,
        current: str,
        new: str,
        client: ClientInfo,
    ) -> None:
        check_length(current)
        async with self._store.transaction() as tx:
            user = await tx.user(user_id)
        if user is None:
            raise InvalidCredentials()
        [email] = await self._crypto.decrypt([(user.email_ct, _pii_aad(user_id, "email"))])
        # Counted on the account's login throttle before the hash, as logins are: a stolen
        # session can't guess the current password any faster than a stranger can log in.
        account_key = self._local_keys.email_throttle_key(email.decode())
        await self._throttle.acquire(account_key, client.ip)
        for _ in range(_VERIFY_ROUNDS):
            if user is None or not (await self._hasher.verify(user.password_hash, current)).ok:
                await self._change_refused(user_id, client)
            check_new_password(new, email=email.decode())
            new_hash = await self._hasher.hash(new)
            told = await self._notices.prepare(
                PASSWORD_CHANGED, user_id=user.id, to=email.decode(), client=client
            )
            notice = await self._store_new_password(user, new_hash, session_id, client, told)
            if notice is not None:
                await self._throttle.accepted(account_key, client.ip)
                await self._sessions.announce(notice)
                self._notices.notify()
                return
            async with self._store.transaction() as tx:  # changed meanwhile: check again
                user = await tx.user(user_id)
        await self._change_refused(user_id, client)

    async def end_pending_email_changes(self, user_id: str) -> None:
        """Retires the user's outstanding email-change links ("sign out everywhere": whoever
        held a session may have asked for one)."""
        async with self._store.transaction() as tx:
            await retire_email_changes(tx, user_id, self._clock.now())

    async def _store_new_password(
        self,
        user: UserRow,
        new_hash: str,
        session_id: str | None,
        client: ClientInfo,
        told: PendingNotice | None,
    ) -> RevocationNotice | None:
        """One transaction: the new hash (if the old one is still the verified one), the end
        of the user's other sessions, links and pending second steps, the event and the
        owner's notice.

        None if the hash changed since it was verified. A login racing this either locked the
        row first (its session is committed before this reads the sessions, and ends here) or
        finds the new hash and checks the password again.
        """
        async with self._store.transaction() as tx:
            now = self._clock.now()
            if not await tx.replace_password_hash(
                user.id, user.password_hash, new_hash, now, changed=True
            ):
                return None
            await self._magic_links.retire(tx, user.id)
            # A change link asked for from a session this change ends (a stolen one) must
            # not move the account later: every pending change ends with the old password.
            await retire_email_changes(tx, user.id, now)
            await MfaRecords(tx).retire_mfa_challenges(user.id, now)
            await self._notices.enqueue(tx, told)
            await tx.emit(
                SecurityEvent(
                    type="user.password_changed",
                    occurred_at=now,
                    actor=f"user:{user.id}",
                    subject=user.id,
                    ip=client.ip,
                    device=client.device,
                )
            )
            return await self._sessions.revoke_all_in(
                tx,
                user_id=user.id,
                keep=session_id,
                reason="password_changed",
                actor=f"user:{user.id}",
                client=client,
                event_type="session.revoked",
            )

    async def _change_refused(self, user_id: str, client: ClientInfo) -> NoReturn:
        async with self._store.transaction() as tx:
            await tx.emit(
                SecurityEvent(
                    type="user.password_change_failed",
                    occurred_at=self._clock.now(),
                    actor=f"user:{user_id}",
                    subject=user_id,
                    ip=client.ip,
                    device=client.device,
                    outcome="failure",
                    reason="bad_password",
                )
            )
        raise InvalidCredentials("current password is incorrect")

    async def profile(self, *, user_id: str, workspace_id: str) -> Profile:
        """One database round trip and one crypto call (pinned by test_round_trips.py)."""
        row = await read_profile(self._store, user_id, workspace_id)
        if row is None:
            raise InvalidCredentials()
        email, name = await self._crypto.decrypt(
            [
                (row.email_ct, _pii_aad(user_id, "email")),
                (row.name_ct, _pii_aad(user_id, "name")),
            ]
        )
        return Profile(
            user_id,
            email.decode(),
            name.decode(),
            workspace_id,
            row.role,
            totp_enabled=row.totp_enabled,
            passkeys=row.passkeys,
            email_verified=row.email_verified,
        )
