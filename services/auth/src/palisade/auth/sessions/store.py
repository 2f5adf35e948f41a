"""Sessions and their tokens: tables, the hot-path statements, and the queries on them.

Rotation decisions lock rows (SELECT ... FOR UPDATE on Postgres; BEGIN IMMEDIATE on SQLite,
see palisade.common.db), so replicas sharing one database agree on every token's fate.

Lock order, the same in every transaction that makes or ends sessions, so no two of them can
wait on each other in a cycle: the user row first (lock_user: shared by whoever makes a
session, exclusive by whoever ends them, or an UPDATE users that already holds it), then the
user's session rows, always in id order (lock_live_sessions, lock_session).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    LargeBinary,
    String,
    Table,
    and_,
    bindparam,
    insert,
    select,
    update,
)

from palisade.auth.bounded import DEVICE_CHARS, IP_CHARS, clip_optional
from palisade.auth.store import TS, AuthTransaction, memberships, metadata, users

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False, index=True),
    Column("workspace_id", String(40), ForeignKey("workspaces.id"), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("last_seen_at", TS, nullable=False),
    Column("absolute_expires_at", TS, nullable=False),
    Column("remember_me", Boolean, nullable=False),
    Column("ip", String(64), nullable=True),
    Column("device", String(128), nullable=True),
    Column("revoked_at", TS, nullable=True),
    Column("revoked_reason", String(32), nullable=True),
)
refresh_tokens = Table(
    "refresh_tokens",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False, index=True),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("rotated_at", TS, nullable=True),
    # The successor token, encrypted, so a concurrent re-presentation within the grace window
    # gets the same successor (one chain per family) without storing any token in plaintext.
    Column("successor_ct", LargeBinary, nullable=True),
)
access_tokens = Table(
    "access_tokens",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False, index=True),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
)


@dataclass(frozen=True)
class SessionRow:
    id: str
    user_id: str
    workspace_id: str
    created_at: datetime
    last_seen_at: datetime
    absolute_expires_at: datetime
    remember_me: bool
    ip: str | None
    device: str | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class RefreshRow:
    token_hash: bytes
    session_id: str
    expires_at: datetime
    rotated_at: datetime | None
    successor_ct: bytes | None


@dataclass(frozen=True)
class AccessGrant:
    """What a valid access token stands for."""

    user_id: str
    workspace_id: str
    role: str
    session_id: str
    expires_at: datetime
    session_revoked: bool
    session_expires_at: datetime
    session_last_seen_at: datetime
    user_disabled: bool
    # The session's login (its creation): refreshes don't move it (see recent_auth.py).
    authenticated_at: datetime
    # Whether the account's address is verified (users.email_verified_at, same statement).
    email_verified: bool = False
    # What the account may not do yet (accounts/restrictions.py); filled in by validate().
    restrictions: tuple[str, ...] = ()


@dataclass(frozen=True)
class RevokedSessions:
    """What one revoke_sessions ended."""

    session_ids: tuple[str, ...]
    access_token_hashes: tuple[bytes, ...]


# Statements on the hot paths, built once with named parameters. Each runs both inside
# transactions (AuthTransaction) and as a direct read (palisade.common.direct_reads), and maps
# its rows by column position, so both paths read them the same way.
_SESSION_COLUMNS = [sessions.c[name] for name in SessionRow.__dataclass_fields__]
_REFRESH_COLUMNS = [refresh_tokens.c[name] for name in RefreshRow.__dataclass_fields__]

LIVE_SESSIONS = (
    select(*_SESSION_COLUMNS)
    .where(
        sessions.c.user_id == bindparam("user_id"),
        sessions.c.revoked_at.is_(None),
        sessions.c.absolute_expires_at > bindparam("now"),
    )
    .order_by(sessions.c.last_seen_at.desc(), sessions.c.id)
)

REFRESH_TOKEN_AND_SESSION = (
    select(*_REFRESH_COLUMNS, *_SESSION_COLUMNS)
    .join_from(refresh_tokens, sessions, sessions.c.id == refresh_tokens.c.session_id)
    .where(refresh_tokens.c.token_hash == bindparam("token_hash"))
)
_REFRESH_TOKEN_AND_SESSION_LOCKED = REFRESH_TOKEN_AND_SESSION.with_for_update()
# The inserts every login makes, built once (their values come as execute parameters).
_INSERT_SESSION = insert(sessions)
_INSERT_REFRESH_TOKEN = insert(refresh_tokens)
_INSERT_ACCESS_TOKEN = insert(access_tokens)


def session_from(row: Sequence[Any]) -> SessionRow:
    """A row of LIVE_SESSIONS (or the session part of REFRESH_TOKEN_AND_SESSION)."""
    return SessionRow(*row)


def refresh_token_and_session(row: Sequence[Any]) -> tuple[RefreshRow, SessionRow]:
    """A row of REFRESH_TOKEN_AND_SESSION."""
    split = len(_REFRESH_COLUMNS)
    token_hash, session_id, expires_at, rotated_at, successor_ct = row[:split]
    token = RefreshRow(
        bytes(token_hash),
        session_id,
        expires_at,
        rotated_at,
        None if successor_ct is None else bytes(successor_ct),
    )
    return token, session_from(row[split:])


class SessionRecords:
    """The session and token tables, inside one AuthTransaction."""

    def __init__(self, tx: AuthTransaction) -> None:
        self._conn = tx.conn
        self._locks = tx.locks_rows

    async def insert_session(self, row: SessionRow) -> None:
        values = {f: getattr(row, f) for f in SessionRow.__dataclass_fields__}
        # Client-supplied: bounded to the columns (Postgres refuses longer values).
        values["ip"] = clip_optional(row.ip, IP_CHARS)
        values["device"] = clip_optional(row.device, DEVICE_CHARS)
        values["revoked_reason"] = None
        await self._conn.execute(_INSERT_SESSION, values)

    async def insert_refresh_token(
        self, *, token_hash: bytes, session_id: str, now: datetime, expires_at: datetime
    ) -> None:
        await self._conn.execute(
            _INSERT_REFRESH_TOKEN,
            {
                "token_hash": token_hash,
                "session_id": session_id,
                "created_at": now,
                "expires_at": expires_at,
            },
        )

    async def insert_access_token(
        self, *, token_hash: bytes, session_id: str, now: datetime, expires_at: datetime
    ) -> None:
        await self._conn.execute(
            _INSERT_ACCESS_TOKEN,
            {
                "token_hash": token_hash,
                "session_id": session_id,
                "created_at": now,
                "expires_at": expires_at,
            },
        )

    async def lock_refresh_token(
        self, token_hash: bytes, *, lock: bool = True
    ) -> tuple[RefreshRow, SessionRow] | None:
        """The token and its session, locked for this transaction's decision (unless lock is
        False: a look before deciding whether any work is worth doing)."""
        query = (
            _REFRESH_TOKEN_AND_SESSION_LOCKED if self._locks and lock else REFRESH_TOKEN_AND_SESSION
        )
        row = (await self._conn.execute(query, {"token_hash": token_hash})).first()
        return None if row is None else refresh_token_and_session(row)

    async def mark_rotated(self, token_hash: bytes, now: datetime, successor_ct: bytes) -> None:
        await self._conn.execute(
            update(refresh_tokens)
            .where(refresh_tokens.c.token_hash == token_hash)
            .values(rotated_at=now, successor_ct=successor_ct)
        )

    async def session(self, session_id: str) -> SessionRow | None:
        row = (
            await self._conn.execute(select(*_SESSION_COLUMNS).where(sessions.c.id == session_id))
        ).first()
        return None if row is None else session_from(row)

    async def lock_user(self, user_id: str, *, exclusive: bool) -> bool:
        """Locks the user row until the transaction ends (the first lock of the module's lock
        order); False if there is no such user. Shared (FOR SHARE) for making a session: makers
        don't wait on each other, but an UPDATE users (a first address proof, a disable, a new
        password) waits for them and then sees their sessions, or they wait for it. Exclusive
        (FOR NO KEY UPDATE) for ending sessions: no session can be made meanwhile. Neither
        blocks the FOR KEY SHARE of foreign-key checks. SQLite: BEGIN IMMEDIATE serialises."""
        query = select(users.c.id).where(users.c.id == user_id)
        if self._locks:
            query = (
                query.with_for_update(key_share=True)
                if exclusive
                else query.with_for_update(read=True)
            )
        return (await self._conn.execute(query)).first() is not None

    async def lock_session(self, session_id: str) -> SessionRow | None:
        """The session, its row locked FOR UPDATE (after the user's row: see the lock order).
        Read after the lock is granted, so a revocation committed meanwhile is seen."""
        query = select(*_SESSION_COLUMNS).where(sessions.c.id == session_id)
        if self._locks:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return None if row is None else session_from(row)

    async def lock_live_sessions(
        self,
        user_id: str,
        now: datetime,
        *,
        workspace_id: str | None = None,
        session_ids: Collection[str] | None = None,
    ) -> list[SessionRow]:
        """The user's live sessions (only those in workspace_id and/or among session_ids, if
        given), locked until the transaction ends: only the rows asked for (a switch must not
        lock its sibling sessions, which other switches hold), in id order (Postgres locks
        rows as the sorted result returns them), so two transactions locking overlapping sets
        take them in the same order."""
        query = select(*_SESSION_COLUMNS).where(
            sessions.c.user_id == user_id,
            sessions.c.revoked_at.is_(None),
            sessions.c.absolute_expires_at > now,
        )
        if workspace_id is not None:
            query = query.where(sessions.c.workspace_id == workspace_id)
        if session_ids is not None:
            query = query.where(sessions.c.id.in_(list(session_ids)))
        query = query.order_by(sessions.c.id)
        if self._locks:
            query = query.with_for_update()
        return [session_from(r) for r in await self._conn.execute(query)]

    async def touch_session(self, session_id: str, now: datetime, ip: str | None) -> None:
        values: dict[str, object] = {"last_seen_at": now}
        if ip:
            values["ip"] = clip_optional(ip, IP_CHARS)
        await self._conn.execute(
            update(sessions).where(sessions.c.id == session_id).values(**values)
        )

    async def sessions_of(self, user_id: str, now: datetime) -> list[SessionRow]:
        """The user's live sessions, most recently used first."""
        rows = await self._conn.execute(LIVE_SESSIONS, {"user_id": user_id, "now": now})
        return [session_from(r) for r in rows]

    async def revoke_sessions(
        self, session_ids: Sequence[str], now: datetime, reason: str
    ) -> RevokedSessions:
        """Ends those of the sessions that were still live; says which (a session another
        transaction ended first is not among them) and the hashes of their unexpired access
        tokens (to announce)."""
        if not session_ids:
            return RevokedSessions((), ())
        ended = await self._conn.execute(
            update(sessions)
            .where(sessions.c.id.in_(list(session_ids)), sessions.c.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
            .returning(sessions.c.id)
        )
        wanted = set(session_ids)
        # In the order asked for (RETURNING's order is the database's).
        ended_ids = {str(r.id) for r in ended} & wanted
        ids = tuple(i for i in dict.fromkeys(session_ids) if i in ended_ids)
        if not ids:
            return RevokedSessions((), ())
        rows = await self._conn.execute(
            select(access_tokens.c.token_hash).where(
                access_tokens.c.session_id.in_(list(ids)), access_tokens.c.expires_at > now
            )
        )
        return RevokedSessions(ids, tuple(bytes(r.token_hash) for r in rows))

    async def access_grant(self, token_hash: bytes) -> AccessGrant | None:
        row = (
            await self._conn.execute(
                select(
                    access_tokens.c.expires_at,
                    sessions.c.id.label("session_id"),
                    sessions.c.user_id,
                    sessions.c.workspace_id,
                    sessions.c.revoked_at,
                    sessions.c.absolute_expires_at,
                    sessions.c.last_seen_at,
                    sessions.c.created_at.label("session_created_at"),
                    memberships.c.role,
                    users.c.disabled_at,
                    users.c.email_verified_at,
                )
                .join(sessions, sessions.c.id == access_tokens.c.session_id)
                .join(users, users.c.id == sessions.c.user_id)
                .join(
                    memberships,
                    and_(
                        memberships.c.user_id == sessions.c.user_id,
                        memberships.c.workspace_id == sessions.c.workspace_id,
                    ),
                )
                .where(access_tokens.c.token_hash == token_hash)
            )
        ).first()
        if row is None:
            return None
        return AccessGrant(
            user_id=row.user_id,
            workspace_id=row.workspace_id,
            role=row.role,
            session_id=row.session_id,
            expires_at=row.expires_at,
            session_revoked=row.revoked_at is not None,
            session_expires_at=row.absolute_expires_at,
            session_last_seen_at=row.last_seen_at,
            user_disabled=row.disabled_at is not None,
            authenticated_at=row.session_created_at,
            email_verified=row.email_verified_at is not None,
        )
