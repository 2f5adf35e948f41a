"""Setting a new password with a reset token: once, never around a second factor.

Before anything is used up, a look (no write): the token is a stored, unused, unexpired reset
token of an active account; the new password passes the policy (SECURITY.md 1-2); and an
account with a second factor (a confirmed authenticator app: mfa/) sent a correct code or
backup code. Without one, the answer is "mfa required" and nothing changes; wrong codes count
on the same per-user counter as login's second step. Passkeys are a way to sign in, not a
second factor (as at login), so a passkey-only account resets with the emailed link alone.

Then the Argon2id hash (outside any transaction), and one transaction, in auth's lock order:
the user row is locked (FOR NO KEY UPDATE) before the token is touched; the core's conditional
UPDATE then uses the token up (of any number of parallel confirmations one wins; the others see no
row and roll back), the code is used up (atomically), the hash is set with
password_changed_at, pending second steps and the user's other emailed links die, the address
counts as proven (the email reached its owner), the "password reset" notice is queued, and
every session of the user ends (published on the revocation feed after commit). No tokens are
returned: the person signs in with the new password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from palisade.auth.accounts.address_proof import AddressProof, prove_address
from palisade.auth.errors import InvalidResetToken, MfaInputInvalid, ResetTokenExpired, Throttled
from palisade.auth.links.password_reset import (
    LinksRetiredByReset,
    reset_token_state,
    reset_tokens,
)
from palisade.auth.local_keys import LocalKeys
from palisade.auth.mail.account_notices import PASSWORD_RESET, AccountNotices, PendingNotice
from palisade.auth.mfa.login import MfaLogins
from palisade.auth.mfa.second_factor import METHODS, SecondFactorProof, SecondFactors
from palisade.auth.mfa.store import MfaRecords
from palisade.auth.passwords.hashing import PasswordHasher
from palisade.auth.passwords.policy import check_new_password
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.sessions.revocation import RevocationNotice
from palisade.auth.sessions.store import SessionRecords
from palisade.auth.store import AuthStore, AuthTransaction, UserRow
from palisade.auth.throttle import LoginThrottle
from palisade.common.aad import associated_data
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient
from palisade.common.errors import PalisadeError
from palisade.common.outbox import SecurityEvent

SESSIONS_REASON = "password_reset"
# A compare-and-set of the hash that loses to a parallel change reads the row again, this often.
_SET_ROUNDS = 3


@dataclass(frozen=True)
class ResetNeedsSecondFactor:
    """Instead of 204: the account has a second factor; send the same token again with one."""

    methods: tuple[str, ...]


@dataclass(frozen=True)
class _Target:
    user: UserRow
    email: str
    second_factor: bool


class _Refused(Exception):
    """Rolls back the transaction; `reason` goes to the security log, `error` to the caller."""

    def __init__(self, reason: str, error: PalisadeError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error


class _CodeAlreadyUsed(Exception):
    """The code matched but a parallel request used it up first."""


class _SecondFactorAdded(Exception):
    """A second factor was turned on between the look and the transaction."""


@dataclass(frozen=True)
class _Done:
    revocation: RevocationNotice
    proof: AddressProof


class ResetConfirmations:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        hasher: PasswordHasher,
        sessions: SessionManager,
        factors: SecondFactors,
        mfa: MfaLogins,
        notices: AccountNotices,
        throttle: LoginThrottle,
        local_keys: LocalKeys,
        clock: Clock,
    ) -> None:
        self._store = store
        self._crypto = crypto
        self._hasher = hasher
        self._sessions = sessions
        self._factors = factors
        self._mfa = mfa
        self._notices = notices
        self._throttle = throttle
        self._local_keys = local_keys
        self._clock = clock
        self._tokens = reset_tokens(clock)
        self._links = LinksRetiredByReset(clock)

    async def confirm(
        self, *, token: str, new_password: str, code: str, backup_code: str, client: ClientInfo
    ) -> ResetNeedsSecondFactor | None:
        """None once the password is set; raises a PalisadeError (4xx) with nothing changed
        otherwise: invalid_token / wrong_token_type (malformed, another kind of token),
        invalid_reset_token (unknown, used, replaced, account disabled), reset_token_expired,
        a weak_password code, invalid_mfa_input, invalid_mfa_code, rate_limited."""
        try:
            digest = self._tokens.check(token)
        except PalisadeError as error:
            await self._refused(None, client, "malformed", error)
        if code and backup_code:
            raise MfaInputInvalid()
        target = await self._target(digest, client)
        check_new_password(new_password, email=target.email)  # a refusal uses nothing up
        user_id = target.user.id
        proof: SecondFactorProof | None = None
        if target.second_factor:
            if not code and not backup_code:
                await self._event(user_id, client, "password.reset_mfa_required")
                return ResetNeedsSecondFactor(METHODS)
            proof = await self._second_factor(user_id, code, backup_code, client)
        new_hash = await self._hasher.hash(new_password)  # outside any transaction
        notice = await self._notices.prepare(
            PASSWORD_RESET, user_id=user_id, client=client, to=target.email
        )
        try:
            done = await self._finish(token, user_id, new_hash, proof, notice, client)
        except _Refused as refused:
            await self._refused(user_id, client, refused.reason, refused.error)
        except _CodeAlreadyUsed:
            await self._factors.record_failure(
                user_id, client, "password.reset_mfa_failed", "code_already_used"
            )
        except _SecondFactorAdded:
            return ResetNeedsSecondFactor(METHODS)
        await done.proof.announce(self._sessions)
        await self._sessions.announce(done.revocation)
        self._notices.notify()
        if proof is not None:
            await self._factors.clear_failures(user_id)
        # The owner proved control of the address (and the second factor): strangers'
        # failed logins no longer hold the account back.
        account_key = self._local_keys.email_throttle_key(target.email)
        await self._throttle.record_success(account_key, client.ip)
        return None

    async def _target(self, digest: bytes, client: ClientInfo) -> _Target:
        """The token's account, read without using anything up; refused when the token
        can't be used (the same answer for unknown, used and disabled: no account detail)."""
        async with self._store.transaction() as tx:
            state = await reset_token_state(tx, digest)
            user = await tx.user(state.user_id) if state is not None else None
            second_factor = user is not None and await self._mfa.required(tx, user.id)
        subject = state.user_id if state is not None else None
        if state is None or user is None:
            await self._refused(subject, client, "unknown", InvalidResetToken())
        if state.consumed:
            await self._refused(subject, client, "used", InvalidResetToken())
        if not state.usable(self._clock.now()):
            await self._refused(subject, client, "expired", ResetTokenExpired())
        if user.disabled:
            await self._refused(subject, client, "disabled", InvalidResetToken())
        [email] = await self._crypto.decrypt([(user.email_ct, _email_aad(user.id))])
        return _Target(user, email.decode(), second_factor)

    async def _second_factor(
        self, user_id: str, code: str, backup_code: str, client: ClientInfo
    ) -> SecondFactorProof:
        """A matching code (not used up yet), counted on login's per-user MFA counter."""
        try:
            await self._factors.count_attempt(user_id)
        except Throttled as throttled:
            await self._refused(user_id, client, "mfa_throttled", throttled)
        proof = await self._factors.verify(user_id=user_id, code=code, backup_code=backup_code)
        if proof is None:
            await self._factors.record_failure(
                user_id, client, "password.reset_mfa_failed", "bad_code"
            )
        return proof

    async def _finish(
        self,
        token: str,
        user_id: str,
        new_hash: str,
        proof: SecondFactorProof | None,
        notice: PendingNotice | None,
        client: ClientInfo,
    ) -> _Done:
        async with self._store.transaction() as tx:
            now = self._clock.now()
            # Auth's lock order: the user row (its id from the look, which took no lock) before
            # the token. A password change holds the row and then retires the reset links; had
            # this used its token up first and then waited for the row, the two would deadlock.
            # Exclusive: the hash is written below.
            if not await SessionRecords(tx).lock_user(user_id, exclusive=True):
                raise _Refused("unknown", InvalidResetToken())
            # The user's other reset tokens die with this one.
            redeemed = await self._tokens.redeem(tx, token, retire_siblings=True, owner=user_id)
            if redeemed is None:
                raise _Refused("used", InvalidResetToken())  # a parallel confirmation won
            if proof is None:
                if await self._mfa.required(tx, user_id):
                    raise _SecondFactorAdded()
            elif not await self._factors.use(tx, proof):
                raise _CodeAlreadyUsed()
            if not await self._set_password(tx, user_id, new_hash):
                raise _Refused("disabled", InvalidResetToken())
            await MfaRecords(tx).retire_mfa_challenges(user_id, now)
            await self._links.retire(tx, user_id)
            # Before the sessions end: a first proof ends them itself (pre-hijacking).
            address = await prove_address(
                tx,
                user_id,
                now=now,
                sessions=self._sessions,
                client=client,
                via="password_reset",
            )
            await self._notices.enqueue(tx, notice)
            await tx.emit(
                SecurityEvent(
                    type="password.reset",
                    occurred_at=now,
                    actor=f"user:{user_id}",
                    subject=user_id,
                    ip=client.ip,
                    device=client.device,
                    details={"second_factor": proof.method if proof is not None else None},
                )
            )
            revocation = await self._sessions.revoke_all_in(
                tx,
                user_id=user_id,
                keep=None,
                reason=SESSIONS_REASON,
                actor=f"user:{user_id}",
                client=client,
                event_type="session.revoked",
            )
            return _Done(revocation, address)

    async def _set_password(self, tx: AuthTransaction, user_id: str, new_hash: str) -> bool:
        """Sets the hash whatever it was (the reset proves the account, not the old password);
        False if the account is gone or disabled. A compare-and-set against the hash just
        read, so a login holding the row (lock_password) finishes first and its session is
        then seen, and ended, by this transaction."""
        for _ in range(_SET_ROUNDS):
            user = await tx.user(user_id)
            if user is None or user.disabled:
                return False
            if await tx.replace_password_hash(
                user_id, user.password_hash, new_hash, self._clock.now(), changed=True
            ):
                return True
        raise _Refused("password_changed", InvalidResetToken())

    async def _event(
        self,
        user_id: str | None,
        client: ClientInfo,
        event_type: str,
        *,
        reason: str | None = None,
    ) -> None:
        async with self._store.transaction() as tx:
            await tx.emit(
                SecurityEvent(
                    type=event_type,
                    occurred_at=self._clock.now(),
                    actor="anonymous",
                    subject=user_id,
                    ip=client.ip,
                    device=client.device,
                    outcome="success" if reason is None else "failure",
                    reason=reason,
                )
            )

    async def _refused(
        self, user_id: str | None, client: ClientInfo, reason: str, error: PalisadeError
    ) -> NoReturn:
        """Records a refused confirmation (SECURITY.md 37) and raises `error`."""
        await self._event(user_id, client, "password.reset_failed", reason=reason)
        raise error


def _email_aad(user_id: str) -> bytes:
    return associated_data("auth", "user", user_id, "email")
