"""The auth database: the transaction object every domain operation runs in, and the identity
tables (users, workspaces, memberships) and security-event outbox every domain joins or writes.

Each domain keeps its own tables and queries next to its code, on this module's `metadata`
(sessions/store.py, mfa/store.py, passkeys/store.py, links/, mail/outbox.py, mail/notices.py,
sessions/revocation_outbox.py), reached through the same AuthTransaction.

Rotation decisions lock rows (SELECT ... FOR UPDATE on Postgres; BEGIN IMMEDIATE on SQLite,
see palisade.common.db), so replicas sharing one database agree on every token's fate.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    Column,
    ForeignKey,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import Select

from palisade.common.db import UTCDateTime, transaction_conflict
from palisade.common.direct_reads import DirectReads
from palisade.common.outbox import SecurityEvent, emit, outbox_table

MIGRATIONS_PACKAGE = "palisade.auth.migrations"
# How many times AuthStore.run() tries a unit of work the database rolled back for a conflict.
TRANSACTION_ATTEMPTS = 3
log = logging.getLogger("palisade.auth.store")
T = TypeVar("T")
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
    # Set when the owner of the address proves it by any emailed link (migration 0007).
    Column("email_verified_at", TS, nullable=True),
    # The account was deleted (accounts/deletion.py, migration 0013): the row keeps only its
    # id, as a pseudonym; disabled_at is set too, so every check that keeps disabled accounts
    # out keeps it out.
    Column("deleted_at", TS, nullable=True),
)
workspaces = Table(
    "workspaces",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", TS, nullable=False),
    # Its last member's account was deleted (migration 0013). Kept, not deleted: sessions,
    # events and keys that name it keep their references; nobody can join it any more (every
    # way in is a manager's invitation, and it has no members).
    Column("closed_at", TS, nullable=True),
)
memberships = Table(
    "memberships",
    metadata,
    Column("workspace_id", String(40), ForeignKey("workspaces.id"), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), primary_key=True, index=True),
    Column("role", String(16), nullable=False),
    Column("created_at", TS, nullable=False),
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
    email_verified: bool = False  # users.email_verified_at is set
    deleted: bool = False  # users.deleted_at is set (then disabled is too)


@dataclass(frozen=True)
class LockedUser:
    """What lock_password read of the user row, under the lock it took: the state
    require_enabled (accounts/account_state.py) would read again under the same lock."""

    disabled: bool
    deleted: bool


# Statements on the login path, built once with named parameters (no per-login construction).
_USER_BY_EMAIL_INDEX: dict[int, Select[Any]] = {}
_PASSWORD_CHECK = select(users.c.disabled_at, users.c.deleted_at).where(
    users.c.id == bindparam("user_id"), users.c.password_hash == bindparam("verified_hash")
)
_PASSWORD_CHECK_SHARED = _PASSWORD_CHECK.with_for_update(read=True)
_PASSWORD_CHECK_EXCLUSIVE = _PASSWORD_CHECK.with_for_update(key_share=True)


def user_by_email_index_statement(count: int) -> Select[Any]:
    """SELECT users WHERE email_index IN (:t0 .. :t<count-1>): one prebuilt statement per
    number of index tokens (a handful: one per usable index key), fit for a direct read
    (named parameters, no expanding IN). Parameters: email_index_params(tokens)."""
    statement = _USER_BY_EMAIL_INDEX.get(count)
    if statement is None:
        statement = _USER_BY_EMAIL_INDEX[count] = select(users).where(
            users.c.email_index.in_([bindparam(f"t{i}") for i in range(count)])
        )
    return statement


def email_index_params(tokens: Sequence[str]) -> dict[str, str]:
    return {f"t{i}": token for i, token in enumerate(tokens)}


class AuthTransaction:
    """One database transaction; every method runs inside it."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._locks = conn.dialect.name == "postgresql"

    @property
    def conn(self) -> AsyncConnection:
        """For domain modules with their own tables (sessions, mail, passkeys); same transaction."""
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

    async def lock_password(
        self, user_id: str, verified_hash: str, *, exclusive: bool
    ) -> LockedUser | None:
        """Whether the user's hash is still the one a password was verified against (None if
        not); if so, the row stays locked until this transaction ends, so a password change
        waits for (and then sees) what this transaction writes, e.g. a new session. The row's
        disabled and deleted state comes from the same statement, read under that lock (what
        require_enabled would read again: SessionManager.start takes it instead).

        Shared lock for plain logins (they don't wait on each other), exclusive when the caller
        is about to write the row (a re-hash). SQLite: its BEGIN IMMEDIATE already serializes.
        """
        if not self._locks:
            query = _PASSWORD_CHECK
        else:
            query = _PASSWORD_CHECK_EXCLUSIVE if exclusive else _PASSWORD_CHECK_SHARED
        row = (
            await self._conn.execute(query, {"user_id": user_id, "verified_hash": verified_hash})
        ).first()
        if row is None:
            return None
        return LockedUser(disabled=row[0] is not None, deleted=row[1] is not None)

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


def user_from(row: Sequence[Any]) -> UserRow:
    """A row of user_by_email_index_statement() as a direct read returns it (a tuple in the
    table's column order)."""
    m = dict(zip(users.c.keys(), row, strict=True))
    return UserRow(
        id=m["id"],
        email_index=m["email_index"],
        email_ct=bytes(m["email_ct"]),
        name_ct=bytes(m["name_ct"]),
        password_hash=m["password_hash"],
        disabled=m["disabled_at"] is not None,
        email_verified=m["email_verified_at"] is not None,
        deleted=m["deleted_at"] is not None,
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
        email_verified=m["email_verified_at"] is not None,
        deleted=m["deleted_at"] is not None,
    )


class AuthStore:
    def __init__(self, *, engine: AsyncEngine, reads: DirectReads | None = None) -> None:
        """reads: the service's DirectReads (palisade.common.direct_reads); without one (some
        tests), the same statements run through the engine."""
        self._engine = engine
        self.reads = reads or DirectReads(engine, None)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AuthTransaction]:
        """Commits when the block ends normally, rolls back if it raises.

        A block cannot be run again from here: where a deadlock or a serialisation failure is
        possible, define the unit of work as a function and use run(), which can."""
        async with self._engine.begin() as conn:
            yield AuthTransaction(conn)

    async def run(
        self,
        work: Callable[[AuthTransaction], Awaitable[T]],
        *,
        attempts: int = TRANSACTION_ATTEMPTS,
    ) -> T:
        """work(tx) in a transaction that commits if it returns; run again from the start, in
        a new transaction, if the database rolled it back to break a deadlock or a
        serialisation failure (nothing of it was written), at most `attempts` times in all.
        work must do nothing outside the transaction that cannot be done twice (announce or
        notify only after run() returns). Other errors, and the last conflict, propagate (the
        RPC layer answers a conflict ABORTED transaction_conflict: palisade.common.interceptors
        .error_mapping)."""
        for attempt in range(1, attempts + 1):
            try:
                async with self.transaction() as tx:
                    return await work(tx)
            except DBAPIError as error:
                if attempt >= attempts or not transaction_conflict(error):
                    raise
                log.info(
                    "transaction rolled back by a conflict; running it again",
                    extra={"attempt": attempt, "error": type(error.orig).__name__},
                )
        raise AssertionError("not reached: the last attempt returns or raises")
