"""The second step of a login: a short-lived, single-use mfaToken traded with a code for tokens.

Every first factor (password, magic link) of a user with a second factor ends in begin(),
never in a session, so neither bypasses it. complete() uses up the mfaToken and the code in
one transaction with the new session: of any number of parallel submissions, one wins.

That transaction keeps auth's lock order (sessions/store.py): the user row first (shared, as
every maker of a session holds it), then the challenge, the code and the new session. Whatever
ends a user's pending second steps (a password change or reset, a first address proof) updates
the user row before it retires their challenges, so the step waits for it and then finds its
challenge used; had the step used up its challenge first, each would wait for the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

from palisade.auth.errors import AccountDisabled, InvalidCredentials, InvalidMfaToken, Throttled
from palisade.auth.mfa.second_factor import METHODS, SecondFactorProof, SecondFactors
from palisade.auth.mfa.store import MfaRecords
from palisade.auth.sessions.manager import ClientInfo, IssuedTokens, SessionManager
from palisade.auth.sessions.store import SessionRecords
from palisade.auth.sessions.tokens import TokenKind, check_token, new_token, token_hash
from palisade.auth.store import AuthStore, AuthTransaction
from palisade.common.clock import Clock
from palisade.common.errors import PalisadeError
from palisade.common.outbox import SecurityEvent


@dataclass(frozen=True)
class MfaPending:
    """Instead of tokens: the first factor passed, a second one is required."""

    mfa_token: str
    methods: tuple[str, ...]


LoginResult = IssuedTokens | MfaPending


class _CodeAlreadyUsed(Exception):
    """Rolls back the transaction that lost the race for a code."""


class MfaLogins:
    def __init__(
        self,
        *,
        store: AuthStore,
        sessions: SessionManager,
        factors: SecondFactors,
        clock: Clock,
        token_seconds: int,
    ) -> None:
        self._store = store
        self._sessions = sessions
        self._factors = factors
        self._clock = clock
        self._token_seconds = token_seconds

    async def required(self, tx: AuthTransaction, user_id: str) -> bool:
        row = await MfaRecords(tx).totp(user_id)
        return row is not None and row.confirmed

    async def begin(
        self,
        tx: AuthTransaction,
        *,
        user_id: str,
        first_factor: str,
        remember_me: bool,
        client: ClientInfo,
    ) -> MfaPending:
        """Records a pending login inside the caller's transaction."""
        now = self._clock.now()
        token = new_token(TokenKind.MFA)
        await MfaRecords(tx).insert_mfa_challenge(
            token_hash=token_hash(token),
            user_id=user_id,
            first_factor=first_factor,
            remember_me=remember_me,
            now=now,
            expires_at=now + timedelta(seconds=self._token_seconds),
        )
        await tx.emit(
            SecurityEvent(
                type="session.mfa_required",
                occurred_at=now,
                actor=f"user:{user_id}",
                subject=user_id,
                ip=client.ip,
                device=client.device,
                details={"first_factor": first_factor},
            )
        )
        return MfaPending(mfa_token=token, methods=METHODS)

    async def complete(
        self, *, mfa_token: str, code: str, backup_code: str, client: ClientInfo
    ) -> IssuedTokens:
        try:
            challenge_hash = check_token(mfa_token, TokenKind.MFA)
        except PalisadeError:
            await self._refused(None, client, "mfa_token_invalid", InvalidMfaToken())
        async with self._store.transaction() as tx:
            pending = await MfaRecords(tx).pending_mfa(challenge_hash, self._clock.now())
        if pending is None:
            await self._refused(None, client, "mfa_token_invalid", InvalidMfaToken())
        user_id = pending.user_id
        try:
            await self._factors.count_attempt(user_id)
        except Throttled as throttled:
            await self._refused(user_id, client, "throttled", throttled)
        proof = await self._factors.verify(user_id=user_id, code=code, backup_code=backup_code)
        if proof is None:
            await self._factors.record_failure(user_id, client, "session.mfa_failed", "bad_code")
        try:
            issued = await self._finish(
                challenge_hash, proof, pending.first_factor, pending.remember_me, client
            )
        except _CodeAlreadyUsed:
            await self._factors.record_failure(
                user_id, client, "session.mfa_failed", "code_already_used"
            )
        except AccountDisabled as disabled:  # the code was right: now it may say so
            await self._refused(user_id, client, "account_disabled", disabled)
        await self._factors.clear_failures(user_id)
        return issued

    async def _refused(
        self, user_id: str | None, client: ClientInfo, reason: str, error: PalisadeError
    ) -> NoReturn:
        """Records a refused second step (SECURITY.md 37) and raises `error`."""
        async with self._store.transaction() as tx:
            await tx.emit(
                SecurityEvent(
                    type="session.mfa_failed",
                    occurred_at=self._clock.now(),
                    actor=f"user:{user_id}" if user_id else "anonymous",
                    subject=user_id,
                    ip=client.ip,
                    device=client.device,
                    outcome="failure",
                    reason=reason,
                )
            )
        raise error

    async def _finish(
        self,
        challenge_hash: bytes,
        proof: SecondFactorProof,
        first_factor: str,
        remember_me: bool,
        client: ClientInfo,
    ) -> IssuedTokens:
        user_id = proof.user_id
        async with self._store.transaction() as tx:
            # The user row before anything else (see the module doc); shared: this transaction
            # never updates it. Read below, once locked, so a disable committed meanwhile is seen.
            if not await SessionRecords(tx).lock_user(user_id, exclusive=False):
                raise InvalidCredentials()
            now = self._clock.now()
            if not await MfaRecords(tx).consume_mfa_challenge(challenge_hash, now):
                raise InvalidMfaToken()
            if not await self._factors.use(tx, proof):
                raise _CodeAlreadyUsed()
            user = await tx.user(user_id)
            if user is None:
                raise InvalidCredentials()
            if user.disabled:  # rolls back: the code and the mfaToken stay unused
                raise AccountDisabled()
            return await self._sessions.sign_in(
                tx,
                user_id=user_id,
                remember_me=remember_me,
                client=client,
                method=f"{first_factor}+{proof.method}",
            )
