"""Single-use emailed tokens: the one core under magic links (and, to come, email verification,
password reset, email-change confirmation, team invitations and "this wasn't me" links).

- A token is 256 bits from the CSPRNG with its purpose's recognisable prefix (sessions/tokens.py);
  only its SHA-256 is stored, so a database read yields nothing that can be redeemed.
- It has a purpose and an expiry (the injectable clock), and is used up by ONE conditional
  UPDATE (`... WHERE token_hash = :h [AND purpose = :p] AND <consumed> IS NULL AND expires_at >
  :now RETURNING ...`): of any number of parallel redemptions, on any number of replicas, on
  Postgres or SQLite, exactly one gets a row back.
- Siblings: issuing or redeeming can retire the user's other outstanding tokens of the same
  purpose (one sign-in per email round; a new reset link voids the old one).
- Lock order: auth locks a user's row before anything else of theirs (sessions/store.py
  lock_user), and a path that holds it may go on to retire the user's tokens (a password
  change, a sibling's confirm). So a redemption that unlocks a change to the account reads
  the token's owner first (owner(), no lock), locks that user row, and only then redeems,
  naming the owner (redeem's `owner`): never the token first, then the row.

The core is parameterised by table (TokenTable): a table with a purpose column can hold many
purposes; a purpose-specific table (magic_links, with `used_at`) holds exactly one, and the core
refuses to be built for any other purpose on it. A token's owner is a user (the `user_id` column)
everywhere but in team invitations, whose invitee may have no account yet: their table names
another owner column (the invitation's own id), and the same rules apply to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, ColumnElement, Table, insert, select, update

from palisade.auth.sessions.tokens import TokenKind, check_token, new_token
from palisade.auth.store import AuthTransaction
from palisade.common.clock import Clock


@dataclass(frozen=True)
class Purpose:
    """What a token is for: its name (stored where the table has a purpose column) and the
    prefix its tokens carry, so a token of another kind is refused before any lookup."""

    name: str
    kind: TokenKind


@dataclass(frozen=True)
class TokenTable:
    """Where tokens live. Required columns: token_hash (LargeBinary(32), primary key or
    unique), the owner column (user_id), created_at, expires_at and the consumed-at column; any
    others are the caller's `values`."""

    table: Table
    consumed_column: str = "consumed_at"
    # None: the table holds one purpose only (`only_purpose`), with no purpose column.
    purpose_column: str | None = "purpose"
    only_purpose: str | None = None
    # Whom a token belongs to: what issue's and retire's `user_id` and RedeemedToken.user_id
    # hold, and what siblings share.
    owner_column: str = "user_id"

    def __post_init__(self) -> None:
        if (self.purpose_column is None) == (self.only_purpose is None):
            raise ValueError("a token table has a purpose column or exactly one purpose")

    def column(self, name: str) -> Column[Any]:
        return self.table.c[name]


@dataclass(frozen=True)
class IssuedToken:
    token: str  # goes into the email; never stored
    expires_at: datetime


@dataclass(frozen=True)
class RedeemedToken:
    user_id: str
    created_at: datetime


class SingleUseTokens:
    """Issue, redeem and retire the tokens of one purpose in one table.

    Every method that touches the database runs inside the caller's AuthTransaction, so a
    redemption commits (or rolls back) together with what it unlocks.
    """

    def __init__(self, *, table: TokenTable, purpose: Purpose, clock: Clock) -> None:
        if table.only_purpose is not None and table.only_purpose != purpose.name:
            raise ValueError(f"{table.table.name} holds {table.only_purpose} tokens only")
        self._spec = table
        self._table = table.table
        self._purpose = purpose
        self._clock = clock
        self._consumed = table.column(table.consumed_column)
        self._owner = table.column(table.owner_column)

    @property
    def purpose(self) -> Purpose:
        return self._purpose

    def new_token(self) -> str:
        """A fresh token of this purpose (not stored yet: see issue)."""
        return new_token(self._purpose.kind)

    def check(self, token: str) -> bytes:
        """The token's hash, if its shape and prefix are this purpose's; otherwise raises
        InvalidToken or WrongTokenType (PalisadeError)."""
        return check_token(token, self._purpose.kind)

    async def issue(
        self,
        tx: AuthTransaction,
        *,
        user_id: str,
        lifetime: timedelta,
        retire_siblings: bool,
        token: str | None = None,
        values: Mapping[str, object] | None = None,
    ) -> IssuedToken:
        """Stores the hash of `token` (a new one if None) for the user, valid for `lifetime`.

        retire_siblings: first retire the user's outstanding tokens of this purpose, so only
        the newest one works. `values`: the table's other columns (clipped by the caller).
        """
        token = token if token is not None else self.new_token()
        digest = self.check(token)
        now = self._clock.now()
        if retire_siblings:
            await self._retire(tx, user_id, now)
        row: dict[str, object] = dict(values or {})
        row.update(token_hash=digest, created_at=now, expires_at=now + lifetime)
        row[self._spec.owner_column] = user_id
        if self._spec.purpose_column is not None:
            row[self._spec.purpose_column] = self._purpose.name
        await tx.conn.execute(insert(self._table).values(**row))
        return IssuedToken(token, now + lifetime)

    async def redeem(
        self,
        tx: AuthTransaction,
        token: str,
        *,
        retire_siblings: bool,
        owner: str | None = None,
    ) -> RedeemedToken | None:
        """Uses the token up; None if it is unknown, used, expired or of another purpose.

        One conditional UPDATE decides: the row count (RETURNING) names the single winner.
        retire_siblings: the winner also retires the user's other tokens of this purpose.
        owner: the user whose row the caller locked first (auth's lock order, see the module
        doc); the token must be theirs, else None. A token of the wrong shape or prefix raises
        (see check) before any statement runs.
        """
        digest = self.check(token)
        now = self._clock.now()
        if retire_siblings and tx.locks_rows:
            await self._lock_siblings(tx, digest, owner)
        mine = [] if owner is None else [self._owner == owner]
        won = (
            await tx.conn.execute(
                update(self._table)
                .where(
                    self._table.c.token_hash == digest,
                    *self._of_purpose(),
                    *mine,
                    self._consumed.is_(None),
                    self._table.c.expires_at > now,
                )
                .values({self._consumed: now})
                .returning(self._owner, self._table.c.created_at)
            )
        ).first()
        if won is None:
            return None
        owner, created_at = won
        if retire_siblings:
            await self._retire(tx, owner, now)
        return RedeemedToken(owner, created_at)

    async def _lock_siblings(self, tx: AuthTransaction, digest: bytes, owner: str | None) -> None:
        """Locks the outstanding tokens of this token's owner, in token_hash order, before the
        conditional UPDATE (Postgres). Two parallel redemptions of sibling tokens would
        otherwise each lock their own row and then wait for the other's in the retirement: a
        deadlock. Locking the whole set in one order makes the second wait for the first and
        then find its token retired (None), as the one-winner rule wants. (A caller that
        locked the owner's user row first is serialised there already; the set is then free.)"""
        owner = owner if owner is not None else await self.owner(tx, digest)
        if owner is None:
            return
        await tx.conn.execute(
            select(self._table.c.token_hash)
            .where(self._owner == owner, *self._of_purpose(), self._consumed.is_(None))
            .order_by(self._table.c.token_hash)
            .with_for_update()
        )

    async def owner(self, tx: AuthTransaction, digest: bytes) -> str | None:
        """Whom the token (by its hash, from check) belongs to, used or not; None if no token
        of this purpose has that hash. A plain read, no lock: a token's owner never changes, so
        a caller can lock the owner's rows first (auth's lock order) and then redeem."""
        owner = (
            await tx.conn.execute(
                select(self._owner).where(self._table.c.token_hash == digest, *self._of_purpose())
            )
        ).scalar_one_or_none()
        return None if owner is None else str(owner)

    async def retire(self, tx: AuthTransaction, user_id: str) -> None:
        """Ends every outstanding token of this purpose the user has (e.g. the password
        changed: links sent before no longer sign in)."""
        await self._retire(tx, user_id, self._clock.now())

    async def _retire(self, tx: AuthTransaction, user_id: str, now: datetime) -> None:
        await tx.conn.execute(
            update(self._table)
            .where(self._owner == user_id, *self._of_purpose(), self._consumed.is_(None))
            .values({self._consumed: now})
        )

    def _of_purpose(self) -> list[ColumnElement[bool]]:
        """The purpose condition; none for a table that holds one purpose only."""
        if self._spec.purpose_column is None:
            return []
        return [self._spec.column(self._spec.purpose_column) == self._purpose.name]
