"""Password reset by an emailed link (SECURITY.md 42, 16): the two steps, behind one object.

    resets = PasswordResets(..., policy=PasswordResetPolicy(...))
    await resets.request(email=..., client=...)                 # always 202, same work
    pending = await resets.confirm(token=..., new_password=..., code="", backup_code="",
                                   client=...)                  # None: done (204)

request: reset_request.py (no enumeration, limits, outbox mail). confirm: reset_confirm.py
(single use, policy, second factor, every session ends). The tokens: links/password_reset.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from palisade.auth.local_keys import LocalKeys
from palisade.auth.mail import MailQueue
from palisade.auth.mail.account_notices import AccountNotices
from palisade.auth.mfa.login import MfaLogins
from palisade.auth.mfa.second_factor import SecondFactors
from palisade.auth.passwords.hashing import PasswordHasher
from palisade.auth.passwords.reset_confirm import ResetConfirmations, ResetNeedsSecondFactor
from palisade.auth.passwords.reset_request import ResetRequestLimits, ResetRequests
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.store import AuthStore
from palisade.auth.throttle import CounterLimiter, LoginThrottle
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient

__all__ = ["PasswordResetPolicy", "PasswordResets", "ResetNeedsSecondFactor"]


@dataclass(frozen=True)
class PasswordResetPolicy:
    public_base_url: str
    token_seconds: int
    email_ip_requests: int
    email_requests: int
    ip_requests: int
    window_seconds: int


class PasswordResets:
    def __init__(
        self,
        *,
        store: AuthStore,
        crypto: CryptoClient,
        hasher: PasswordHasher,
        sessions: SessionManager,
        factors: SecondFactors,
        mfa: MfaLogins,
        mail: MailQueue,
        notices: AccountNotices,
        limiter: CounterLimiter,
        throttle: LoginThrottle,
        local_keys: LocalKeys,
        policy: PasswordResetPolicy,
        clock: Clock,
    ) -> None:
        self._requests = ResetRequests(
            store=store,
            crypto=crypto,
            mail=mail,
            limiter=limiter,
            throttle=throttle,
            local_keys=local_keys,
            limits=ResetRequestLimits(
                token_seconds=policy.token_seconds,
                email_ip_requests=policy.email_ip_requests,
                email_requests=policy.email_requests,
                ip_requests=policy.ip_requests,
                window_seconds=policy.window_seconds,
            ),
            public_base_url=policy.public_base_url,
            clock=clock,
        )
        self._confirmations = ResetConfirmations(
            store=store,
            crypto=crypto,
            hasher=hasher,
            sessions=sessions,
            factors=factors,
            mfa=mfa,
            notices=notices,
            throttle=throttle,
            local_keys=local_keys,
            clock=clock,
        )

    async def request(self, *, email: str, client: ClientInfo) -> None:
        await self._requests.request(email=email, client=client)

    async def confirm(
        self, *, token: str, new_password: str, code: str, backup_code: str, client: ClientInfo
    ) -> ResetNeedsSecondFactor | None:
        return await self._confirmations.confirm(
            token=token,
            new_password=new_password,
            code=code,
            backup_code=backup_code,
            client=client,
        )
