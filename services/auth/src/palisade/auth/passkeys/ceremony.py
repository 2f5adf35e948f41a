"""What the passkey ceremonies share: the relying party, server-side challenges, audit events.

Challenges are server-side rows (256 random bits, 5 minutes on the injectable clock), bound to a
purpose and, where known, a user, and consumed by one conditional UPDATE *before* the response
is verified: of any number of parallel uses one proceeds, and a failed verification has used it
up too. A malformed response (400) is refused before the challenge is touched.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from palisade.auth.local_keys import LocalKeys
from palisade.auth.mail.account_notices import AccountNotices
from palisade.auth.passkeys.errors import ChallengeInvalid
from palisade.auth.passkeys.store import (
    CHALLENGE_ID_PREFIX,
    REGISTRATION,
    ChallengeRow,
    PasskeyRecords,
    PasskeyRow,
)
from palisade.auth.passkeys.webauthn_ceremony import Descriptor
from palisade.auth.sessions.manager import ClientInfo, SessionManager
from palisade.auth.store import AuthStore
from palisade.common.clock import Clock
from palisade.common.crypto_client import CryptoClient
from palisade.common.errors import PalisadeError
from palisade.common.outbox import SecurityEvent

log = logging.getLogger("palisade.auth.passkeys")

CHALLENGE_BYTES = 32


def descriptors(rows: Sequence[PasskeyRow]) -> list[Descriptor]:
    return [Descriptor(row.credential_id, row.transports) for row in rows]


class Refused(Exception):
    """A ceremony step failed: `reason` goes to the security log, `error` to the caller."""

    def __init__(self, reason: str, error: PalisadeError) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.subject: str | None = None  # the user concerned, once known


class PasskeyCeremonies:
    """The dependencies and helpers that registration, login and management share."""

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
        notices: AccountNotices,
    ) -> None:
        if not rp_id or not rp_name or not origins:
            raise ValueError("passkeys need an rp id, an rp name and at least one origin")
        self._store = store
        self._crypto = crypto
        self._sessions = sessions
        self._notices = notices
        self._local_keys = local_keys
        self._clock = clock
        self._rp_id = rp_id
        self._rp_name = rp_name
        self._origins = list(origins)
        self._lifetime = timedelta(seconds=challenge_seconds)

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
            raise Refused(reason, ChallengeInvalid())
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
