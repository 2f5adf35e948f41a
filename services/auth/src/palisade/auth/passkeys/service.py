"""Passkeys (WebAuthn L3): registration, login (email-first or username-less) and management.

Ceremonies (SECURITY.md 19-22):
- Challenges are server-side rows (256 random bits, 5 minutes on the injectable clock), bound
  to a purpose and, where known, a user, and consumed by one conditional UPDATE *before* the
  response is verified: of any number of parallel uses one proceeds, and a failed verification
  has used it up too. A malformed response (400) is refused before the challenge is touched.
- Registration asks for a discoverable credential with user verification and no attestation,
  excludes the user's own credentials, and stores a credential id for one user only.
- Login verifies origin, rpIdHash, UP, UV, the signature and the user handle; a sign counter
  that does not go up (unless it stays 0) is refused and audited, the stored count unchanged.
  A passkey with user verification is two factors in one, so it ends in a session directly.
- For an email without passkeys (unknown, disabled, or none registered) the login options list
  decoy credentials derived from auth's stable local key and the email (local_keys.py, so an
  index-key rotation does not change them while real lists stay put): stable per email,
  unlinkable across emails, as many and shaped (id lengths, transports) like real lists.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from webauthn.helpers.structs import AuthenticationCredential, RegistrationCredential

from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT, normalize_email
from palisade.auth.errors import NotSignedIn
from palisade.auth.local_keys import LocalKeys
from palisade.auth.passkeys.errors import (
    ChallengeInvalid,
    InvalidPasskeyCredential,
    InvalidPasskeyName,
    PasskeyAlreadyRegistered,
    PasskeyLimitReached,
    PasskeyNotFound,
    PasskeyRegistrationFailed,
    PasskeyVerificationFailed,
)
from palisade.auth.passkeys.store import (
    AUTHENTICATION,
    CHALLENGE_ID_PREFIX,
    REGISTRATION,
    ChallengeRow,
    PasskeyRecords,
    PasskeyRow,
)
from palisade.auth.passkeys.webauthn_json import (
    Descriptor,
    VerificationFailed,
    creation_options,
    decoy_credentials,
    parse_authentication,
    parse_registration,
    request_options,
    transports_of,
    verify_assertion,
    verify_registration,
)
from palisade.auth.sessions.manager import ClientInfo, IssuedTokens, SessionManager
from palisade.auth.store import AuthStore, AuthTransaction
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.errors import PalisadeError
from palisade.common.outbox import SecurityEvent

log = logging.getLogger("palisade.auth.passkeys")

CHALLENGE_BYTES = 32
USER_HANDLE_BYTES = 32
PASSKEY_ID_PREFIX = "pkey_"
DEFAULT_NAME = "Passkey"
MAX_NAME_LENGTH = 100
MAX_PASSKEYS = 20  # per user; also bounds excludeCredentials / allowCredentials


@dataclass(frozen=True)
class PasskeyInfo:
    id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    backed_up: bool


def clean_passkey_name(name: str, *, default: str | None = None) -> str:
    """NFC, trimmed, 1..100 printable characters; empty becomes `default` where one is given."""
    cleaned = unicodedata.normalize("NFC", name or "").strip()
    if not cleaned and default is not None:
        return default
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH or not cleaned.isprintable():
        raise InvalidPasskeyName()
    return cleaned


def _descriptors(rows: Sequence[PasskeyRow]) -> list[Descriptor]:
    return [Descriptor(row.credential_id, row.transports) for row in rows]


def _info(row: PasskeyRow) -> PasskeyInfo:
    return PasskeyInfo(row.id, row.name, row.created_at, row.last_used_at, row.backed_up)


class _Refused(Exception):
    """A ceremony step failed: `reason` goes to the security log, `error` to the caller."""

    def __init__(self, reason: str, error: PalisadeError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.subject: str | None = None  # the user concerned, once known


class Passkeys:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        sessions: SessionManager,
        local_keys: LocalKeys,
        clock: Clock,
        rp_id: str,
        rp_name: str,
        origins: Sequence[str],
        challenge_seconds: int,
    ) -> None:
        if not rp_id or not rp_name or not origins:
            raise ValueError("passkeys need an rp id, an rp name and at least one origin")
        self._store = store
        self._crypto = crypto
        self._sessions = sessions
        self._local_keys = local_keys
        self._clock = clock
        self._rp_id = rp_id
        self._rp_name = rp_name
        self._origins = list(origins)
        self._lifetime = timedelta(seconds=challenge_seconds)

    # -- registration -------------------------------------------------------------------------

    async def registration_options(
        self, *, user_id: str, client: ClientInfo
    ) -> tuple[str, dict[str, Any]]:
        """(challenge id, PublicKeyCredentialCreationOptionsJSON) for the signed-in user."""
        async with self._store.transaction() as tx:
            user = await tx.user(user_id)
            if user is None or user.disabled:
                raise NotSignedIn()
            if await PasskeyRecords(tx).count(user_id) >= MAX_PASSKEYS:
                raise PasskeyLimitReached()
        email, name = await self._crypto.decrypt(
            [
                (user.email_ct, associated_data("auth", "user", user_id, "email")),
                (user.name_ct, associated_data("auth", "user", user_id, "name")),
            ]
        )
        challenge_id, challenge = self._new_challenge()
        async with self._store.transaction() as tx:
            records = PasskeyRecords(tx)
            now = self._clock.now()
            handle = await records.ensure_user_handle(
                user_id, secrets.token_bytes(USER_HANDLE_BYTES), now
            )
            existing = await records.of_user(user_id)
            await records.add_challenge(
                challenge_id=challenge_id,
                challenge=challenge,
                purpose=REGISTRATION,
                user_id=user_id,
                discoverable=False,
                now=now,
                lifetime=self._lifetime,
            )
        options = creation_options(
            rp_id=self._rp_id,
            rp_name=self._rp_name,
            user_handle=handle,
            user_name=email.decode(),
            user_display_name=name.decode(),
            challenge=challenge,
            timeout_ms=self._timeout_ms(),
            exclude=_descriptors(existing),
        )
        return challenge_id, options

    async def register(
        self,
        *,
        user_id: str,
        challenge_id: str,
        credential: object,
        name: str,
        client: ClientInfo,
    ) -> str:
        """Verifies a RegistrationResponseJSON and stores the passkey; returns its id."""
        label = clean_passkey_name(name, default=DEFAULT_NAME)
        try:
            parsed = parse_registration(credential)
        except InvalidPasskeyCredential:
            async with self._store.transaction() as tx:
                await tx.emit(
                    self._event("passkey.registration_failed", user_id, client, "malformed")
                )
            raise
        async with self._store.transaction() as tx:
            try:
                passkey_id = await self._register(
                    tx, user_id, challenge_id, parsed, transports_of(credential), label, client
                )
            except _Refused as refused:
                await tx.emit(
                    self._event("passkey.registration_failed", user_id, client, refused.reason)
                )
                failure = refused.error
            else:
                return passkey_id
        raise failure  # after the commit: the challenge stays used, the failure is recorded

    async def _register(
        self,
        tx: AuthTransaction,
        user_id: str,
        challenge_id: str,
        parsed: RegistrationCredential,
        transports: list[str],
        label: str,
        client: ClientInfo,
    ) -> str:
        records = PasskeyRecords(tx)
        now = self._clock.now()
        challenge = await self._consume(records, challenge_id, REGISTRATION, user_id, now)
        user = await tx.user(user_id)
        if user is None or user.disabled:
            raise _Refused("user_disabled", NotSignedIn())
        try:
            verified = verify_registration(
                parsed, challenge=challenge.challenge, rp_id=self._rp_id, origins=self._origins
            )
        except VerificationFailed as failed:
            log.info("passkey registration refused", extra={"error": failed.kind})
            raise _Refused("verification_failed", PasskeyRegistrationFailed()) from None
        if await records.count(user_id) >= MAX_PASSKEYS:
            raise _Refused("limit_reached", PasskeyLimitReached())
        row = PasskeyRow(
            id=f"{PASSKEY_ID_PREFIX}{uuid.uuid4().hex}",
            user_id=user_id,
            credential_id=verified.credential_id,
            public_key=verified.public_key,
            sign_count=verified.sign_count,
            transports=tuple(transports),
            aaguid=verified.aaguid,
            backup_eligible=verified.backup_eligible,
            backed_up=verified.backed_up,
            name=label,
            created_at=now,
            last_used_at=None,
        )
        if await records.by_credential_id(row.credential_id, lock=False) is not None:
            raise _Refused("duplicate_credential", PasskeyAlreadyRegistered())
        try:
            await records.insert(row)
        except IntegrityError:  # registered concurrently, by this user or another
            raise _Refused("duplicate_credential", PasskeyAlreadyRegistered()) from None
        await tx.emit(
            self._event(
                "passkey.registered",
                user_id,
                client,
                details={
                    "passkey_id": row.id,
                    "aaguid": row.aaguid,
                    "backup_eligible": row.backup_eligible,
                    "backed_up": row.backed_up,
                },
            )
        )
        return row.id

    # -- login --------------------------------------------------------------------------------

    async def login_options(
        self, *, email: str | None, client: ClientInfo
    ) -> tuple[str, dict[str, Any]]:
        """(challenge id, PublicKeyCredentialRequestOptionsJSON); never says if email is known."""
        tokens: list[str] = []
        decoys: list[Descriptor] = []
        if email:
            normalized = normalize_email(email)
            tokens = await self._crypto.blind_index(
                normalized, Normalization.EMAIL, EMAIL_INDEX_CONTEXT, all_versions=True
            )
            decoys = decoy_credentials(self._local_keys.decoy_seed(normalized))
        challenge_id, challenge = self._new_challenge()
        allowed: list[Descriptor] = []
        async with self._store.transaction() as tx:
            records = PasskeyRecords(tx)
            bound: str | None = None
            if tokens:
                user = await tx.user_by_email_index(tokens)
                if user is not None and not user.disabled:
                    bound = user.id
                # The same queries whether or not the email is known.
                rows = await records.of_user(bound or "")
                allowed = _descriptors(rows) if rows else decoys
            await records.add_challenge(
                challenge_id=challenge_id,
                challenge=challenge,
                purpose=AUTHENTICATION,
                user_id=bound,
                discoverable=not tokens,  # no email: any discoverable credential
                now=self._clock.now(),
                lifetime=self._lifetime,
            )
        options = request_options(
            rp_id=self._rp_id, challenge=challenge, timeout_ms=self._timeout_ms(), allow=allowed
        )
        return challenge_id, options

    async def login(
        self, *, challenge_id: str, credential: object, client: ClientInfo
    ) -> IssuedTokens:
        """Verifies an AuthenticationResponseJSON and starts a session."""
        try:
            parsed = parse_authentication(credential)
        except InvalidPasskeyCredential:
            async with self._store.transaction() as tx:
                await tx.emit(self._login_failed(None, client, "passkey_malformed"))
            raise
        async with self._store.transaction() as tx:
            try:
                return await self._login(tx, challenge_id, parsed, client)
            except _Refused as refused:
                await tx.emit(self._login_failed(refused.subject, client, refused.reason))
                failure = refused.error
        raise failure  # after the commit: the challenge stays used, the failure is recorded

    async def _login(
        self,
        tx: AuthTransaction,
        challenge_id: str,
        parsed: AuthenticationCredential,
        client: ClientInfo,
    ) -> IssuedTokens:
        records = PasskeyRecords(tx)
        now = self._clock.now()
        challenge = await self._consume(records, challenge_id, AUTHENTICATION, None, now)
        passkey = await records.by_credential_id(parsed.raw_id, lock=True)  # counter decision
        if passkey is None:
            raise _Refused("passkey_unknown_credential", PasskeyVerificationFailed())
        try:
            return await self._accept(tx, records, challenge, passkey, parsed, client, now)
        except _Refused as refused:
            refused.subject = passkey.user_id
            raise

    async def _accept(
        self,
        tx: AuthTransaction,
        records: PasskeyRecords,
        challenge: ChallengeRow,
        passkey: PasskeyRow,
        parsed: AuthenticationCredential,
        client: ClientInfo,
        now: datetime,
    ) -> IssuedTokens:
        """Every check of an assertion for a known credential; then the session."""
        refused = PasskeyVerificationFailed()
        if not challenge.discoverable and challenge.user_id != passkey.user_id:
            raise _Refused("passkey_not_allowed", refused)  # another user's allow-list
        presented = parsed.response.user_handle
        if presented is None and challenge.discoverable:
            raise _Refused("passkey_user_handle_missing", refused)
        if presented is not None:
            handle = await records.user_handle(passkey.user_id)
            if handle is None or not hmac.compare_digest(handle, presented):
                raise _Refused("passkey_user_handle_mismatch", refused)
        user = await tx.user(passkey.user_id)
        if user is None or user.disabled:
            raise _Refused("passkey_user_disabled", refused)
        if await tx.primary_membership(user.id) is None:
            raise _Refused("passkey_no_workspace", refused)
        try:
            verified = verify_assertion(
                parsed,
                challenge=challenge.challenge,
                rp_id=self._rp_id,
                origins=self._origins,
                public_key=passkey.public_key,
            )
        except VerificationFailed as failed:
            log.info("passkey assertion refused", extra={"error": failed.kind})
            raise _Refused("passkey_verification_failed", refused) from None
        if verified.backup_eligible != passkey.backup_eligible:
            raise _Refused("passkey_backup_eligibility_changed", refused)  # fixed per credential
        count = verified.sign_count
        if (count > 0 or passkey.sign_count > 0) and count <= passkey.sign_count:
            await tx.emit(
                self._event(
                    "passkey.sign_count_regressed",
                    passkey.user_id,
                    client,
                    "sign_count_not_increased",
                    actor="anonymous",
                    details={
                        "passkey_id": passkey.id,
                        "stored_count": passkey.sign_count,
                        "presented_count": count,
                    },
                )
            )
            raise _Refused("passkey_sign_count_regressed", refused)
        await records.record_use(
            passkey.id, sign_count=count, backed_up=verified.backed_up, now=now
        )
        return await self._sessions.sign_in(
            tx,
            user_id=user.id,
            remember_me=False,
            client=client,
            method="passkey",
            details={"passkey_id": passkey.id},
        )

    # -- management ---------------------------------------------------------------------------

    async def list(self, user_id: str) -> list[PasskeyInfo]:
        async with self._store.transaction() as tx:
            return [_info(row) for row in await PasskeyRecords(tx).of_user(user_id)]

    async def count(self, user_id: str) -> int:
        async with self._store.transaction() as tx:
            return await PasskeyRecords(tx).count(user_id)

    async def get(self, user_id: str, passkey_id: str) -> PasskeyInfo:
        """The user's passkey; another user's id is not found, like a missing one."""
        async with self._store.transaction() as tx:
            row = await PasskeyRecords(tx).get(user_id, passkey_id)
        if row is None:
            raise PasskeyNotFound()
        return _info(row)

    async def rename(
        self, *, user_id: str, passkey_id: str, name: str, client: ClientInfo
    ) -> PasskeyInfo:
        label = clean_passkey_name(name)
        async with self._store.transaction() as tx:
            records = PasskeyRecords(tx)
            if not await records.rename(user_id, passkey_id, label):
                raise PasskeyNotFound()
            row = await records.get(user_id, passkey_id)
            assert row is not None
            await tx.emit(
                self._event("passkey.renamed", user_id, client, details={"passkey_id": passkey_id})
            )
        return _info(row)

    async def delete(self, *, user_id: str, passkey_id: str, client: ClientInfo) -> None:
        async with self._store.transaction() as tx:
            if not await PasskeyRecords(tx).delete(user_id, passkey_id):
                raise PasskeyNotFound()
            await tx.emit(
                self._event("passkey.removed", user_id, client, details={"passkey_id": passkey_id})
            )

    # -- helpers ------------------------------------------------------------------------------

    def _new_challenge(self) -> tuple[str, bytes]:
        return CHALLENGE_ID_PREFIX + secrets.token_urlsafe(32), secrets.token_bytes(CHALLENGE_BYTES)

    def _timeout_ms(self) -> int:
        return int(self._lifetime.total_seconds() * 1000)

    async def _consume(
        self,
        records: PasskeyRecords,
        challenge_id: str,
        purpose: str,
        user_id: str | None,
        now: datetime,
    ) -> ChallengeRow:
        challenge = await records.consume_challenge(
            challenge_id, purpose=purpose, user_id=user_id, now=now
        )
        if challenge is None:  # unknown, used, expired, another purpose or another user's
            reason = "challenge_invalid" if purpose == REGISTRATION else "passkey_challenge_invalid"
            raise _Refused(reason, ChallengeInvalid())
        return challenge

    def _event(
        self,
        event_type: str,
        user_id: str | None,
        client: ClientInfo,
        reason: str | None = None,
        *,
        actor: str | None = None,
        details: Mapping[str, str | int | bool | None] | None = None,
    ) -> SecurityEvent:
        return SecurityEvent(
            type=event_type,
            occurred_at=self._clock.now(),
            actor=actor or f"user:{user_id}",
            subject=user_id,
            ip=client.ip,
            device=client.device,
            outcome="success" if reason is None else "failure",
            reason=reason,
            details=details or {},
        )

    def _login_failed(self, user_id: str | None, client: ClientInfo, reason: str) -> SecurityEvent:
        details = {"method": "passkey"}
        return self._event(
            "session.login_failed", user_id, client, reason, actor="anonymous", details=details
        )
