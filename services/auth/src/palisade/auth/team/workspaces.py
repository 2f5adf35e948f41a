"""The workspaces a person belongs to, and moving their session from one to another.

A session belongs to one workspace (the gateway's grant names it, and every role check is
made in it). Switching makes a new session in the other workspace and ends the current one in
the same transaction (the revocation feed tells every gateway); the new session carries on the
same login (its login time, absolute expiry and remember-me), so a switch is never a fresh
login for "recent auth" and never lengthens a session.
"""

from __future__ import annotations

import re

from palisade.auth.errors import NotSignedIn
from palisade.auth.sessions.manager import ClientInfo, IssuedTokens, SessionManager
from palisade.auth.store import AuthStore
from palisade.auth.team.errors import WorkspaceNotFound
from palisade.auth.team.records import TeamRecords, WorkspaceMembership
from palisade.common.clock import Clock
from palisade.common.outbox import SecurityEvent

_WORKSPACE_ID = re.compile(r"ws_[0-9a-f]{32}")


class Workspaces:
    def __init__(self, *, store: AuthStore, sessions: SessionManager, clock: Clock) -> None:
        self._store = store
        self._sessions = sessions
        self._clock = clock

    async def of(self, user_id: str) -> list[WorkspaceMembership]:
        async with self._store.transaction() as tx:
            return await TeamRecords(tx).workspaces_of(user_id)

    async def switch(
        self, *, user_id: str, session_id: str | None, workspace_id: str, client: ClientInfo
    ) -> IssuedTokens:
        if not _WORKSPACE_ID.fullmatch(workspace_id):
            raise WorkspaceNotFound()
        async with self._store.transaction() as tx:
            records = TeamRecords(tx)
            current = await self._sessions.live_session(tx, session_id) if session_id else None
            if current is None or current.user_id != user_id:
                raise NotSignedIn()
            if await records.membership(workspace_id, user_id) is None:
                raise WorkspaceNotFound()  # another's workspace looks like none at all
            ended = await self._sessions.revoke_where_in(
                tx,
                user_id=user_id,
                session_ids=[current.id],
                reason="workspace_switched",
                actor=f"user:{user_id}",
                client=client,
                event_type="session.revoked",
            )
            issued = await self._sessions.start(
                tx,
                user_id=user_id,
                workspace_id=workspace_id,
                remember_me=current.remember_me,
                client=client,
                continues=current,
            )
            await tx.emit(
                SecurityEvent(
                    type="session.workspace_switched",
                    occurred_at=self._clock.now(),
                    actor=f"user:{user_id}",
                    subject=user_id,
                    workspace_id=workspace_id,
                    ip=client.ip,
                    device=client.device,
                    details={
                        "from_workspace_id": current.workspace_id,
                        "from_session_id": current.id,
                        "session_id": issued.session_id,
                    },
                )
            )
        await self._sessions.announce(ended)
        return issued
