"""Team changes and the sessions being made meanwhile, on real Postgres (issue 12).

A team change locks its workspace FOR NO KEY UPDATE (team/records.py): it excludes the other
team changes of the workspace (the last-owner rule), but not the FOR KEY SHARE that every row
referencing the workspace takes when it is inserted (a session, a membership, an invitation).
FOR UPDATE blocked those, and so deadlocked a member's removal against a first address proof
of that member (which holds their user row and sessions, then signs in to the workspace).
What the stronger lock also gave, a session made in parallel never missed by the change's
revocation notice, now comes from the member's user row, which a role change and a removal
lock (exclusively) before they change the membership. Deterministic: the test holds the other
transaction open and watches Postgres (pg_blocking_pids, NOWAIT probes), it never sleeps.
SQLite serialises writers and is covered by the team tests on both backends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, text

from palisade.auth.sessions.store import SessionRecords, SessionRow, sessions
from palisade.auth.store import AuthStore, memberships
from palisade.auth.team.records import TeamRecords
from palisade.common.db import create_engine

from .lock_order_support import backend_pid, row_is_free, start, wait_until_blocked_by
from .team_support import Person, Team, running_team

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def team(auth_factory, postgres_url: str) -> AsyncIterator[Team]:
    async with running_team(auth_factory, postgres_url) as running:
        yield running


@pytest.fixture
async def store(team: Team) -> AsyncIterator[AuthStore]:
    """The test's own connections to the service's database (the "other" transactions)."""
    engine = create_engine(team.auth.auth_db_url)
    yield AuthStore(engine=engine)
    await engine.dispose()


async def _member_acting_there(team: Team) -> tuple[Person, Person]:
    """Ada owns her workspace; Kay is a member there, with a session in it."""
    ada = await team.person("ada@example.com")
    kay = await team.person("kay@example.com", name="Kay")
    await team.add(ada.workspace_id, kay, "member")
    return ada, await team.move(kay, ada.workspace_id)


def _new_session(team: Team, user_id: str, workspace_id: str) -> SessionRow:
    now = team.auth.clock.now()
    return SessionRow(
        id=f"ses_{uuid.uuid4().hex}",
        user_id=user_id,
        workspace_id=workspace_id,
        created_at=now,
        last_seen_at=now,
        absolute_expires_at=now + timedelta(hours=1),
        remember_me=False,
        ip=None,
        device=None,
        revoked_at=None,
    )


async def _revoked_reason(store: AuthStore, session_id: str) -> str | None:
    async with store.transaction() as tx:
        return (
            await tx.conn.execute(
                select(sessions.c.revoked_reason).where(sessions.c.id == session_id)
            )
        ).scalar_one()


async def test_a_team_change_excludes_team_changes_but_not_rows_referencing_the_workspace(
    team: Team, store: AuthStore
) -> None:
    ada, kay = await _member_acting_there(team)
    grace = await team.person("grace@example.com", name="Grace")
    url = team.auth.auth_db_url
    async with store.transaction() as tx:
        assert await TeamRecords(tx).lock_workspace(ada.workspace_id)
        # Another team change of this workspace waits (last-owner rule)...
        assert not await row_is_free(
            url,
            "SELECT 1 FROM workspaces WHERE id = %s FOR NO KEY UPDATE NOWAIT",
            [ada.workspace_id],
        )
        # ...a foreign key to it does not: what inserting a session, membership or invitation
        # that references the workspace takes.
        assert await row_is_free(
            url, "SELECT 1 FROM workspaces WHERE id = %s FOR KEY SHARE NOWAIT", [ada.workspace_id]
        )
        async with store.transaction() as other:
            # A real insert, which must not wait at all (a wait would be refused at once).
            await other.conn.execute(text("SET LOCAL lock_timeout = '1ms'"))
            await other.conn.execute(
                insert(memberships).values(
                    workspace_id=ada.workspace_id,
                    user_id=grace.user_id,
                    role="member",
                    created_at=team.auth.clock.now(),
                )
            )
            await SessionRecords(other).insert_session(
                _new_session(team, kay.user_id, ada.workspace_id)
            )


async def test_a_removal_and_a_first_proof_signing_in_there_do_not_deadlock(
    team: Team, store: AuthStore
) -> None:
    """The first proof of Kay's address (a magic link) holds her user row and her sessions (it
    ends them) and then signs her in to Ada's workspace, while Ada removes her from it. The
    removal waits for Kay's user row, the proof's new session does not wait for the workspace:
    the proof commits, and the removal then ends the session it made too."""
    ada, kay = await _member_acting_there(team)
    async with store.transaction() as proof:
        blocker = await backend_pid(proof.conn)
        records = SessionRecords(proof)
        assert await records.lock_user(kay.user_id, exclusive=True)
        held = await records.lock_live_sessions(kay.user_id, team.auth.clock.now())
        assert kay.grant.session_id in {s.id for s in held}  # her session in Ada's workspace
        removal = start(team.remove(ada, kay.user_id))
        await wait_until_blocked_by(team.auth.auth_db_url, blocker, removal)
        # With the workspace held FOR UPDATE by the removal, this insert's foreign key would
        # wait for it while it waits for the sessions held here: a deadlock.
        made = _new_session(team, kay.user_id, ada.workspace_id)
        await records.insert_session(made)
    await asyncio.wait_for(removal, timeout=20)
    assert await team.role(ada.workspace_id, kay.user_id) is None
    # The removal saw the session made meanwhile and ended it with the others.
    assert await _revoked_reason(store, made.id) == "member_removed"
    assert await _revoked_reason(store, kay.grant.session_id) == "member_removed"


async def test_a_role_change_waits_for_a_sign_in_in_flight_and_names_its_session(
    team: Team, store: AuthStore
) -> None:
    """A sign-in of Kay's into Ada's workspace is in flight (it holds Kay's user row shared and
    has made its session) when Ada changes Kay's role. The change waits for it (the workspace
    lock alone would not make it), so its notice names that session too: no gateway keeps
    Kay's old role for it."""
    ada, kay = await _member_acting_there(team)
    async with team.auth.servers[0].revocations.subscribe() as events:
        async with store.transaction() as sign_in:
            blocker = await backend_pid(sign_in.conn)
            records = SessionRecords(sign_in)
            assert await records.lock_user(kay.user_id, exclusive=False)
            made = _new_session(team, kay.user_id, ada.workspace_id)
            await records.insert_session(made)
            change = start(team.change_role(ada, kay.user_id, "admin"))
            await wait_until_blocked_by(team.auth.auth_db_url, blocker, change)
        assert (await asyncio.wait_for(change, timeout=20)).role == "admin"
        async with asyncio.timeout(10):
            async for event in events:
                if event.notice is not None and event.notice.reason == "role_changed":
                    notice = event.notice
                    break
    assert made.id in notice.session_ids
    assert kay.grant.session_id in notice.session_ids
