"""Recent authentication: changes to sign-in methods need a login from the last few minutes.

A stolen access or refresh token alone then can't switch off a second factor or add a passkey
(SECURITY.md 27). The session's creation is its login: refreshes don't move it.
"""

from __future__ import annotations

from datetime import timedelta

from palisade.auth.errors import RecentAuthRequired
from palisade.auth.store import AuthStore
from palisade.common.clock import Clock


class RecentAuth:
    def __init__(self, *, store: AuthStore, clock: Clock, max_age_seconds: int) -> None:
        self._store = store
        self._clock = clock
        self._max_age = timedelta(seconds=max_age_seconds)

    async def require(self, *, user_id: str, session_id: str | None) -> None:
        if not session_id:
            raise RecentAuthRequired()
        async with self._store.transaction() as tx:
            session = await tx.session(session_id)
        if (
            session is None
            or session.user_id != user_id
            or session.revoked_at is not None
            or self._clock.now() - session.created_at > self._max_age
        ):
            raise RecentAuthRequired()
