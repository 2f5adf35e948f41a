"""The workspaces a person belongs to, and moving their session from one to another.

A session belongs to one workspace (the gateway's grant names it, and every role check is
made in it). Switching makes a new session in the other workspace and ends the current one in
the same transaction (the revocation feed tells every gateway); the new session carries on the
same login (its login time, absolute expiry and remember-me), so a switch is never a fresh
login for "recent auth" and never lengthens a session.
"""

from __future__ import annotations

import re

from sqlalchemy import select

from palisade.auth.errors import NotSignedIn
from palisade.auth.sessions.manager import ClientInfo, IssuedTokens, SessionManager
from palisade.auth.sessions.revocation import RevocationNotice
from palisade.auth.store import AuthStore, AuthTransaction, workspaces
from palisade.auth.team.errors import WorkspaceNotFound
from palisade.auth.team.records import TeamRecords, WorkspaceMembership
from palisade.common.clock import Clock
from palisade.common.outbox import SecurityEvent

_WORKSPACE_ID = re.compile(r"ws_[0-9a-f]{32}")


async def _key_share_workspace(tx: AuthTransaction, workspace_id: str) -> bool:
    """Holds FOR KEY SHARE on the workspace row (what a foreign key to it takes): waits for a
    team change holding the row (FOR UPDATE), never for another session. False: no such row."""
    query = select(workspaces.c.id).where(workspaces.c.id == workspace_id)
    if tx.locks_rows:
        query = query.with_for_update(read=True, key_share=True)
    return (await tx.conn.execute(query)).first() is not None


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
        # One unit of work, run again from the start if the database breaks a lock cycle.
        issued, ended = await self._store.run(
            lambda tx: self._switch_in(tx, user_id, session_id, workspace_id, client)
        )
        await self._sessions.announce(ended)
        return issued

    async def _switch_in(
        self,
        tx: AuthTransaction,
        user_id: str,
        session_id: str | None,
        workspace_id: str,
        client: ClientInfo,
    ) -> tuple[IssuedTokens, RevocationNotice]:
        records = TeamRecords(tx)
        # Lock order: the target workspace (the key-share lock the new session's foreign
        # key takes anyway, taken first so a member's removal holding that row can never
        # wait on a session this holds), then the user row and the session
        # (live_session), then the new session.
        workspace_exists = await _key_share_workspace(tx, workspace_id)
        current = (
            await self._sessions.live_session(tx, session_id, user_id=user_id)
            if session_id
            else None
        )
        if current is None:
            raise NotSignedIn()
        if not workspace_exists or await records.membership(workspace_id, user_id) is None:
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
        if current.id not in ended.session_ids:
            # Not reached while the session row is locked; never carry on a session
            # that something else ended (a first address proof, a sign-out).
            raise NotSignedIn()
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
        return issued, ended
