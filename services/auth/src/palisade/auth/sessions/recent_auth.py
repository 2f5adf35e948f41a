"""Recent authentication: changes to sign-in methods need a login from the last few minutes.

A stolen access or refresh token alone then can't switch off a second factor or add a passkey
(SECURITY.md 27). The session's creation is its login: refreshes don't move it.
"""

from __future__ import annotations

from datetime import timedelta

from palisade.auth.errors import RecentAuthRequired
from palisade.auth.sessions.manager import ClientInfo
from palisade.auth.sessions.store import SessionRecords
from palisade.auth.store import AuthStore
from palisade.common.clock import Clock
from palisade.common.outbox import SecurityEvent


class RecentAuth:
    def __init__(self, *, store: AuthStore, clock: Clock, max_age_seconds: int) -> None:
        self._store = store
        self._clock = clock
        self._max_age = timedelta(seconds=max_age_seconds)

    async def require(
        self, *, user_id: str, session_id: str | None, client: ClientInfo, action: str
    ) -> None:
        """Raises RecentAuthRequired (and records the refusal) unless the login is recent."""
        async with self._store.transaction() as tx:
            session = await SessionRecords(tx).session(session_id) if session_id else None
            if (
                session is not None
                and session.user_id == user_id
                and session.revoked_at is None
                and self._clock.now() - session.created_at <= self._max_age
            ):
                return
            await tx.emit(
                SecurityEvent(
                    type="auth.recent_auth_required",
                    occurred_at=self._clock.now(),
                    actor=f"user:{user_id}",
                    subject=user_id,
                    ip=client.ip,
                    device=client.device,
                    outcome="failure",
                    reason="login_too_old",
                    details={"action": action, "session_id": session_id},
                )
            )
        raise RecentAuthRequired()
