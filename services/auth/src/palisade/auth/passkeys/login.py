"""Passkey login (WebAuthn L3, SECURITY.md 19-22): email-first or username-less.

Login verifies origin, rpIdHash, UP, UV, the signature and the user handle; a sign counter that
does not go up (unless it stays 0) is refused and audited, the stored count unchanged. A passkey
with user verification is two factors in one, so it ends in a session directly.

For an email without passkeys (unknown, disabled, or none registered) the login options list
decoy credentials derived from auth's stable local key and the email (local_keys.py, so an
index-key rotation does not change them while real lists stay put): stable per email,
unlinkable across emails, as many and shaped (id lengths, transports) like real lists.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

from webauthn.helpers.structs import AuthenticationCredential

from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT, normalize_email
from palisade.auth.errors import AccountDisabled
from palisade.auth.passkeys.ceremony import PasskeyCeremonies, Refused, descriptors, log
from palisade.auth.passkeys.errors import InvalidPasskeyCredential, PasskeyVerificationFailed
from palisade.auth.passkeys.store import AUTHENTICATION, ChallengeRow, PasskeyRecords, PasskeyRow
from palisade.auth.passkeys.webauthn_ceremony import (
    Descriptor,
    VerificationFailed,
    decoy_credentials,
    request_options,
    verify_assertion,
)
from palisade.auth.passkeys.webauthn_json import parse_authentication
from palisade.auth.sessions.manager import ClientInfo, IssuedTokens
from palisade.auth.store import AuthTransaction
from palisade.common.crypto_client import Normalization


class PasskeyLogin(PasskeyCeremonies):
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
                allowed = descriptors(rows) if rows else decoys
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
            except Refused as refused:
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
            raise Refused("passkey_unknown_credential", PasskeyVerificationFailed())
        try:
            return await self._accept(tx, records, challenge, passkey, parsed, client, now)
        except Refused as refused:
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
            raise Refused("passkey_not_allowed", refused)  # another user's allow-list
        presented = parsed.response.user_handle
        if presented is None and challenge.discoverable:
            raise Refused("passkey_user_handle_missing", refused)
        if presented is not None:
            handle = await records.user_handle(passkey.user_id)
            if handle is None or not hmac.compare_digest(handle, presented):
                raise Refused("passkey_user_handle_mismatch", refused)
        user = await tx.user(passkey.user_id)
        if user is None:
            raise Refused("passkey_user_missing", refused)
        if await tx.primary_membership(user.id) is None:
            raise Refused("passkey_no_workspace", refused)
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
            raise Refused("passkey_verification_failed", refused) from None
        if verified.backup_eligible != passkey.backup_eligible:
            raise Refused("passkey_backup_eligibility_changed", refused)  # fixed per credential
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
            raise Refused("passkey_sign_count_regressed", refused)
        await records.record_use(
            passkey.id, sign_count=count, backed_up=verified.backed_up, now=now
        )
        if user.disabled:  # the assertion verified (its counter is kept): now it may say so
            raise Refused("passkey_user_disabled", AccountDisabled())
        return await self._sessions.sign_in(
            tx,
            user_id=user.id,
            remember_me=False,
            client=client,
            method="passkey",
            details={"passkey_id": passkey.id},
        )
