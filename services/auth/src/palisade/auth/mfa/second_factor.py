"""TOTP enrolment and backup codes, and checking a second factor.

Secrets at rest: the TOTP secret and every backup code are encrypted by the crypto service
(associated data binds each to its user); backup codes are found by a keyed blind index of
(user, code), so the database holds no code in a form that can be replayed or brute-forced
offline. A code is used up by one conditional UPDATE (see mfa_store), which the caller runs in
the same transaction as whatever the code unlocks.

Wrong codes count per user (TOTP and backup codes together, enrolment confirmations too);
only a correct second factor clears the count, so re-entering the password doesn't.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import NoReturn

from palisade.auth.accounts.restrictions import require_verified
from palisade.auth.errors import (
    InvalidMfaCode,
    MfaInputInvalid,
    TotpAlreadyEnabled,
    TotpNotEnrolled,
)
from palisade.auth.mail.account_notices import (
    BACKUP_CODES_REGENERATED,
    TOTP_DISABLED,
    AccountNotices,
)
from palisade.auth.mfa import backup_codes, totp
from palisade.auth.mfa.store import MfaRecords
from palisade.auth.sessions.manager import ClientInfo
from palisade.auth.store import AuthStore, AuthTransaction
from palisade.auth.subjects import user_subject
from palisade.auth.throttle import Counter, CounterLimiter
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient, Normalization
from palisade.common.outbox import SecurityEvent

BACKUP_CODE_INDEX_CONTEXT = b"auth/backup_code"
METHODS = ("totp", "backup_code")


def _totp_aad(user_id: str) -> bytes:
    return associated_data("auth", "user", user_id, "totp_secret")


def _backup_code_aad(user_id: str, code_id: str) -> bytes:
    return associated_data("auth", "backup_code", user_id, code_id)


def _email_aad(user_id: str) -> bytes:
    return associated_data("auth", "user", user_id, "email")


@dataclass(frozen=True)
class TotpEnrollment:
    secret: str
    otpauth_uri: str


@dataclass(frozen=True)
class SecondFactorProof:
    """A code that matched; it still has to be used up (atomically) to count."""

    user_id: str
    method: str  # "totp" or "backup_code"
    totp_step: int | None = None
    backup_code_indexes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MfaLimits:
    failures: int
    window_seconds: int


class SecondFactors:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        clock: Clock,
        limiter: CounterLimiter,
        limits: MfaLimits,
        issuer: str,
        notices: AccountNotices,
    ) -> None:
        self._store = store
        self._notices = notices
        self._crypto = crypto
        self._clock = clock
        self._limiter = limiter
        self._limits = limits
        self._issuer = issuer

    def _counters(self, user_id: str) -> list[Counter]:
        return [Counter(f"mfa:user:{user_id}", self._limits.failures, self._limits.window_seconds)]

    async def totp_enabled(self, user_id: str) -> bool:
        async with self._store.transaction() as tx:
            row = await MfaRecords(tx).totp(user_id)
        return row is not None and row.confirmed

    # -- enrolment ----------------------------------------------------------------------------

    async def start_totp(self, *, user_id: str, client: ClientInfo) -> TotpEnrollment:
        async with self._store.transaction() as tx:
            user = await tx.user(user_id)
            current = await MfaRecords(tx).totp(user_id)
        if user is None:
            raise TotpNotEnrolled()
        # Before the address is proven, no factor of the signer-up's own (pre-hijacking).
        require_verified(email_verified=user.email_verified)
        if current is not None and current.confirmed:
            raise TotpAlreadyEnabled()
        secret = totp.new_secret()
        [email] = await self._crypto.decrypt([(user.email_ct, _email_aad(user_id))])
        [secret_ct] = await self._crypto.encrypt(
            [(secret.encode(), _totp_aad(user_id))], subject=user_subject(user_id)
        )
        async with self._store.transaction() as tx:
            now = self._clock.now()
            if not await MfaRecords(tx).start_totp(user_id, secret_ct, now):
                raise TotpAlreadyEnabled()
            await tx.emit(self._event("mfa.totp_enrollment_started", user_id, client))
        return TotpEnrollment(
            secret=secret,
            otpauth_uri=totp.provisioning_uri(secret, account=email.decode(), issuer=self._issuer),
        )

    async def confirm_totp(self, *, user_id: str, code: str, client: ClientInfo) -> list[str]:
        """A valid code turns TOTP on; returns the first set of backup codes."""
        await self._limiter.acquire(self._counters(user_id))
        async with self._store.transaction() as tx:
            user = await tx.user(user_id)
            pending = await MfaRecords(tx).totp(user_id)
        if user is None or pending is None:
            raise TotpNotEnrolled()
        # An enrolment started before the address was proven (or before this rule) never
        # completes while it still is not.
        require_verified(email_verified=user.email_verified)
        if pending.confirmed:
            raise TotpAlreadyEnabled()
        secret = await self._secret(user_id, pending.secret_ct)
        step = totp.matching_step(secret, code, self._clock.timestamp())
        if step is None:
            await self.record_failure(user_id, client, "mfa.totp_confirm_failed", "bad_code")
        codes, rows = await self._new_backup_codes(user_id)
        async with self._store.transaction() as tx:
            now = self._clock.now()
            records = MfaRecords(tx)
            if not await records.confirm_totp(user_id, pending.secret_ct, step, now):
                # Confirmed meanwhile by a parallel request, or a new enrolment replaced it.
                raise TotpNotEnrolled()
            await records.replace_backup_codes(user_id, rows, now)
            await tx.emit(self._event("mfa.totp_enabled", user_id, client))
        await self._limiter.clear(self._counters(user_id))
        return codes

    async def disable_totp(self, *, user_id: str, client: ClientInfo) -> None:
        told = await self._notices.prepare(TOTP_DISABLED, user_id=user_id, client=client)
        async with self._store.transaction() as tx:
            if not await MfaRecords(tx).delete_totp(user_id):
                raise TotpNotEnrolled()
            await self._notices.enqueue(tx, told)
            await tx.emit(self._event("mfa.totp_disabled", user_id, client))
        self._notices.notify()

    async def regenerate_backup_codes(self, *, user_id: str, client: ClientInfo) -> list[str]:
        if not await self.totp_enabled(user_id):
            raise TotpNotEnrolled()
        codes, rows = await self._new_backup_codes(user_id)
        told = await self._notices.prepare(BACKUP_CODES_REGENERATED, user_id=user_id, client=client)
        async with self._store.transaction() as tx:
            records = MfaRecords(tx)
            row = await records.totp(user_id)
            if row is None or not row.confirmed:
                raise TotpNotEnrolled()
            await records.replace_backup_codes(user_id, rows, self._clock.now())
            await self._notices.enqueue(tx, told)
            await tx.emit(self._event("mfa.backup_codes_regenerated", user_id, client))
        self._notices.notify()
        return codes

    async def _new_backup_codes(
        self, user_id: str
    ) -> tuple[list[str], list[tuple[str, str, bytes]]]:
        codes = backup_codes.new_codes()
        ids = [f"bkc_{uuid.uuid4().hex}" for _ in codes]
        indexes = await self._crypto.blind_index_many(
            [f"{user_id}:{code}" for code in codes], Normalization.EXACT, BACKUP_CODE_INDEX_CONTEXT
        )
        cts = await self._crypto.encrypt(
            [
                (code.encode(), _backup_code_aad(user_id, code_id))
                for code, code_id in zip(codes, ids, strict=True)
            ],
            subject=user_subject(user_id),  # auth/subjects.py
        )
        rows = [
            (code_id, tokens[0], ct) for code_id, tokens, ct in zip(ids, indexes, cts, strict=True)
        ]
        return codes, rows

    # -- checking a second factor -----------------------------------------------------------

    async def count_attempt(self, user_id: str) -> None:
        """Counts this attempt (a correct code clears the count), or raises Throttled."""
        await self._limiter.acquire(self._counters(user_id))

    async def verify(
        self, *, user_id: str, code: str, backup_code: str
    ) -> SecondFactorProof | None:
        """Checks one code (exactly one of the two); None if it doesn't match."""
        if bool(code) == bool(backup_code):
            raise MfaInputInvalid()
        async with self._store.transaction() as tx:
            row = await MfaRecords(tx).totp(user_id)
        if row is None or not row.confirmed:
            return None
        if code:
            secret = await self._secret(user_id, row.secret_ct)
            step = totp.matching_step(secret, code, self._clock.timestamp())
            if step is None or (row.last_used_step is not None and step <= row.last_used_step):
                return None
            return SecondFactorProof(user_id, "totp", totp_step=step)
        normalized = backup_codes.normalize_code(backup_code)
        if normalized is None:
            return None
        indexes = await self._crypto.blind_index(
            f"{user_id}:{normalized}",
            Normalization.EXACT,
            BACKUP_CODE_INDEX_CONTEXT,
            all_versions=True,
        )
        return SecondFactorProof(user_id, "backup_code", backup_code_indexes=tuple(indexes))

    async def use(self, tx: AuthTransaction, proof: SecondFactorProof) -> bool:
        """Uses the code up inside the caller's transaction; False if it was already used."""
        records = MfaRecords(tx)
        if proof.totp_step is not None:
            return await records.use_totp_step(proof.user_id, proof.totp_step)
        used = await records.use_backup_code(
            proof.user_id, proof.backup_code_indexes, self._clock.now()
        )
        if used:
            remaining = await records.unused_backup_codes(proof.user_id)
            await tx.emit(
                SecurityEvent(
                    type="mfa.backup_code_used",
                    occurred_at=self._clock.now(),
                    actor=f"user:{proof.user_id}",
                    subject=proof.user_id,
                    details={"remaining": remaining},
                )
            )
        return used

    async def record_failure(
        self, user_id: str, client: ClientInfo, event_type: str, reason: str
    ) -> NoReturn:
        """Writes the event for a wrong or reused code (already counted) and refuses it."""
        async with self._store.transaction() as tx:
            await tx.emit(
                self._event(event_type, user_id, client, outcome="failure", reason=reason)
            )
        raise InvalidMfaCode()

    async def clear_failures(self, user_id: str) -> None:
        await self._limiter.clear(self._counters(user_id))

    async def _secret(self, user_id: str, secret_ct: bytes) -> str:
        [secret] = await self._crypto.decrypt([(secret_ct, _totp_aad(user_id))])
        return secret.decode()

    def _event(
        self,
        event_type: str,
        user_id: str,
        client: ClientInfo,
        *,
        outcome: str = "success",
        reason: str | None = None,
    ) -> SecurityEvent:
        return SecurityEvent(
            type=event_type,
            occurred_at=self._clock.now(),
            actor=f"user:{user_id}",
            subject=user_id,
            ip=client.ip,
            device=client.device,
            outcome=outcome,
            reason=reason,
        )
