"""Passkey registration (WebAuthn L3, SECURITY.md 19-22).

Registration asks for a discoverable credential with user verification and no attestation,
excludes the user's own credentials, and stores a credential id for one user only.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

from sqlalchemy.exc import IntegrityError
from webauthn.helpers.structs import RegistrationCredential

from palisade.auth.accounts.restrictions import EmailNotVerified, require_verified
from palisade.auth.errors import NotSignedIn
from palisade.auth.mail.account_notices import PASSKEY_ADDED
from palisade.auth.passkeys.ceremony import PasskeyCeremonies, Refused, descriptors, log
from palisade.auth.passkeys.errors import (
    InvalidPasskeyCredential,
    PasskeyAlreadyRegistered,
    PasskeyLimitReached,
    PasskeyRegistrationFailed,
)
from palisade.auth.passkeys.management import DEFAULT_NAME, clean_passkey_name
from palisade.auth.passkeys.store import REGISTRATION, PasskeyRecords, PasskeyRow
from palisade.auth.passkeys.webauthn_ceremony import (
    VerificationFailed,
    creation_options,
    verify_registration,
)
from palisade.auth.passkeys.webauthn_json import parse_registration, transports_of
from palisade.auth.sessions.manager import ClientInfo
from palisade.auth.store import AuthTransaction
from palisade.common.aad import associated_data

USER_HANDLE_BYTES = 32
PASSKEY_ID_PREFIX = "pkey_"
MAX_PASSKEYS = 20  # per user; also bounds excludeCredentials / allowCredentials


class PasskeyRegistration(PasskeyCeremonies):
    async def registration_options(
        self, *, user_id: str, client: ClientInfo
    ) -> tuple[str, dict[str, Any]]:
        """(challenge id, PublicKeyCredentialCreationOptionsJSON) for the signed-in user."""
        async with self._store.transaction() as tx:
            user = await tx.user(user_id)
            if user is None or user.disabled:
                raise NotSignedIn()
            # Before the address is proven, no passkey of the signer-up's own (pre-hijacking).
            require_verified(email_verified=user.email_verified)
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
            exclude=descriptors(existing),
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
        told = await self._notices.prepare(
            PASSKEY_ADDED, user_id=user_id, client=client, details={"passkey_name": label}
        )
        failure: Exception | None = None
        async with self._store.transaction() as tx:
            try:
                passkey_id = await self._register(
                    tx, user_id, challenge_id, parsed, transports_of(credential), label, client
                )
            except Refused as refused:
                await tx.emit(
                    self._event("passkey.registration_failed", user_id, client, refused.reason)
                )
                failure = refused.error
            else:
                await self._notices.enqueue(tx, told)
        if failure is not None:
            raise failure  # after the commit: the challenge stays used, the failure is recorded
        self._notices.notify()
        return passkey_id

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
            raise Refused("user_disabled", NotSignedIn())
        if not user.email_verified:
            raise Refused("email_not_verified", EmailNotVerified())
        try:
            verified = verify_registration(
                parsed, challenge=challenge.challenge, rp_id=self._rp_id, origins=self._origins
            )
        except VerificationFailed as failed:
            log.info("passkey registration refused", extra={"error": failed.kind})
            raise Refused("verification_failed", PasskeyRegistrationFailed()) from None
        if await records.count(user_id) >= MAX_PASSKEYS:
            raise Refused("limit_reached", PasskeyLimitReached())
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
            raise Refused("duplicate_credential", PasskeyAlreadyRegistered())
        try:
            await records.insert(row)
        except IntegrityError:  # registered concurrently, by this user or another
            raise Refused("duplicate_credential", PasskeyAlreadyRegistered()) from None
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
