"""The auth database: tables, and the transaction object every domain operation runs in.

Rotation decisions lock rows (SELECT ... FOR UPDATE on Postgres; BEGIN IMMEDIATE on SQLite,
see palisade.common.db), so replicas sharing one database agree on every token's fate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    ForeignKey,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.auth.bounded import DEVICE_CHARS, IP_CHARS, clip_optional
from palisade.common.db import UTCDateTime
from palisade.common.direct_reads import DirectReads
from palisade.common.outbox import SecurityEvent, emit, outbox_table

MIGRATIONS_PACKAGE = "palisade.auth.migrations"
metadata = MetaData()
TS = UTCDateTime()

users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),
    # Blind index token of the normalized email (keyed HMAC via crypto): lookup without plaintext.
    Column("email_index", String(128), nullable=False, unique=True),
    Column("email_ct", LargeBinary, nullable=False),  # AES-256-GCM envelope (crypto service)
    Column("name_ct", LargeBinary, nullable=False),
    Column("password_hash", String(256), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("password_changed_at", TS, nullable=False),
    Column("disabled_at", TS, nullable=True),
)
workspaces = Table(
    "workspaces",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", TS, nullable=False),
)
memberships = Table(
    "memberships",
    metadata,
    Column("workspace_id", String(40), ForeignKey("workspaces.id"), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), primary_key=True, index=True),
    Column("role", String(16), nullable=False),
    Column("created_at", TS, nullable=False),
)
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
outbox = outbox_table(metadata)


class DuplicateEmail(Exception):
    """insert_user lost a race: another transaction stored the same email index first."""


@dataclass(frozen=True)
class UserRow:
    id: str
    email_index: str
    email_ct: bytes
    name_ct: bytes
    password_hash: str
    disabled: bool


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


class AuthTransaction:
    """One database transaction; every method runs inside it."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._locks = conn.dialect.name == "postgresql"

    @property
    def conn(self) -> AsyncConnection:
        """For feature modules with their own tables (mail, passkeys); same transaction."""
        return self._conn

    @property
    def locks_rows(self) -> bool:
        """True where SELECT ... FOR UPDATE works (Postgres); SQLite locks the database."""
        return self._locks

    async def emit(self, event: SecurityEvent) -> None:
        await emit(self._conn, outbox, event)

    # -- users and workspaces ---------------------------------------------------------------

    async def user_by_email_index(self, tokens: Sequence[str]) -> UserRow | None:
        row = (
            await self._conn.execute(select(users).where(users.c.email_index.in_(list(tokens))))
        ).first()
        return None if row is None else _user(row)

    async def user(self, user_id: str) -> UserRow | None:
        row = (await self._conn.execute(select(users).where(users.c.id == user_id))).first()
        return None if row is None else _user(row)

    async def insert_user(
        self,
        *,
        user_id: str,
        email_index: str,
        email_ct: bytes,
        name_ct: bytes,
        password_hash: str,
        now: datetime,
    ) -> None:
        try:
            await self._conn.execute(
                insert(users).values(
                    id=user_id,
                    email_index=email_index,
                    email_ct=email_ct,
                    name_ct=name_ct,
                    password_hash=password_hash,
                    created_at=now,
                    password_changed_at=now,
                )
            )
        except IntegrityError as exc:  # the unique email_index: this transaction is over
            raise DuplicateEmail() from exc

    async def insert_workspace(self, *, workspace_id: str, name: str, now: datetime) -> None:
        await self._conn.execute(
            insert(workspaces).values(id=workspace_id, name=name, created_at=now)
        )

    async def insert_membership(
        self, *, workspace_id: str, user_id: str, role: str, now: datetime
    ) -> None:
        await self._conn.execute(
            insert(memberships).values(
                workspace_id=workspace_id, user_id=user_id, role=role, created_at=now
            )
        )

    async def primary_membership(self, user_id: str) -> tuple[str, str] | None:
        """(workspace id, role) of the user's first workspace."""
        row = (
            await self._conn.execute(
                select(memberships.c.workspace_id, memberships.c.role)
                .where(memberships.c.user_id == user_id)
                .order_by(memberships.c.created_at, memberships.c.workspace_id)
                .limit(1)
            )
        ).first()
        return None if row is None else (row.workspace_id, row.role)

    async def role_in(self, user_id: str, workspace_id: str) -> str | None:
        return (
            await self._conn.execute(
                select(memberships.c.role).where(
                    memberships.c.user_id == user_id, memberships.c.workspace_id == workspace_id
                )
            )
        ).scalar_one_or_none()

    async def lock_password(self, user_id: str, verified_hash: str, *, exclusive: bool) -> bool:
        """Whether the user's hash is still the one a password was verified against; if so,
        the row stays locked until this transaction ends, so a password change waits for
        (and then sees) what this transaction writes, e.g. a new session.

        Shared lock for plain logins (they don't wait on each other), exclusive when the caller
        is about to write the row (a re-hash). SQLite: its BEGIN IMMEDIATE already serializes.
        """
        query = select(users.c.id).where(
            users.c.id == user_id, users.c.password_hash == verified_hash
        )
        if self._locks:
            query = (
                query.with_for_update(key_share=True)
                if exclusive
                else query.with_for_update(read=True)
            )
        return (await self._conn.execute(query)).first() is not None

    async def replace_password_hash(
        self, user_id: str, old_hash: str, new_hash: str, now: datetime, *, changed: bool
    ) -> bool:
        """Compare-and-set: writes new_hash only if the stored hash is still old_hash.

        A re-hash (changed=False) or a change that lost a race writes nothing, so a login
        that verified the old password can never put it back.
        """
        values: dict[str, object] = {"password_hash": new_hash}
        if changed:
            values["password_changed_at"] = now
        result = await self._conn.execute(
            update(users)
            .where(users.c.id == user_id, users.c.password_hash == old_hash)
            .values(**values)
        )
        return int(result.rowcount) == 1

    # -- sessions and tokens ----------------------------------------------------------------

    async def insert_session(self, row: SessionRow) -> None:
        values = {f: getattr(row, f) for f in SessionRow.__dataclass_fields__}
        # Client-supplied: bounded to the columns (Postgres refuses longer values).
        values["ip"] = clip_optional(row.ip, IP_CHARS)
        values["device"] = clip_optional(row.device, DEVICE_CHARS)
        await self._conn.execute(insert(sessions).values(**values, revoked_reason=None))

    async def insert_refresh_token(
        self, *, token_hash: bytes, session_id: str, now: datetime, expires_at: datetime
    ) -> None:
        await self._conn.execute(
            insert(refresh_tokens).values(
                token_hash=token_hash,
                session_id=session_id,
                created_at=now,
                expires_at=expires_at,
            )
        )

    async def insert_access_token(
        self, *, token_hash: bytes, session_id: str, now: datetime, expires_at: datetime
    ) -> None:
        await self._conn.execute(
            insert(access_tokens).values(
                token_hash=token_hash,
                session_id=session_id,
                created_at=now,
                expires_at=expires_at,
            )
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
    ) -> list[bytes]:
        """Ends sessions; returns hashes of their unexpired access tokens (to announce)."""
        if not session_ids:
            return []
        await self._conn.execute(
            update(sessions)
            .where(sessions.c.id.in_(list(session_ids)), sessions.c.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
        )
        rows = await self._conn.execute(
            select(access_tokens.c.token_hash).where(
                access_tokens.c.session_id.in_(list(session_ids)), access_tokens.c.expires_at > now
            )
        )
        return [bytes(r.token_hash) for r in rows]

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
        )


def _user(row: object) -> UserRow:
    m = row._mapping  # type: ignore[attr-defined]
    return UserRow(
        id=m["id"],
        email_index=m["email_index"],
        email_ct=m["email_ct"],
        name_ct=m["name_ct"],
        password_hash=m["password_hash"],
        disabled=m["disabled_at"] is not None,
    )


class AuthStore:
    def __init__(self, *, engine: AsyncEngine, reads: DirectReads | None = None) -> None:
        """reads: the service's DirectReads (palisade.common.direct_reads); without one (some
        tests), the same statements run through the engine."""
        self._engine = engine
        self.reads = reads or DirectReads(engine, None)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AuthTransaction]:
        """Commits when the block ends normally, rolls back if it raises."""
        async with self._engine.begin() as conn:
            yield AuthTransaction(conn)
