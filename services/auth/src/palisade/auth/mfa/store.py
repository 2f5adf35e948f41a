"""Tables and queries for second factors and pending MFA logins (magic links: links/).

Every single-use secret is consumed by one conditional UPDATE (`... WHERE used_at IS NULL`)
whose row count decides the winner, so any number of concurrent requests, on any number of
replicas, yield exactly one success on both Postgres and SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    LargeBinary,
    String,
    Table,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult

from palisade.auth.store import AuthTransaction, metadata
from palisade.common.db import UTCDateTime

TS = UTCDateTime()

totp_credentials = Table(
    "totp_credentials",
    metadata,
    Column("user_id", String(40), ForeignKey("users.id"), primary_key=True),
    # The base32 secret, encrypted by the crypto service (AAD binds it to the user).
    Column("secret_ct", LargeBinary, nullable=False),
    Column("created_at", TS, nullable=False),
    # NULL while enrolment waits for the first valid code.
    Column("confirmed_at", TS, nullable=True),
    # The last 30 s step a code was accepted for: a code (and any earlier one) works once.
    Column("last_used_step", BigInteger, nullable=True),
)
backup_codes = Table(
    "backup_codes",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False, index=True),
    # Keyed blind index of (user, code) for lookup, and the code encrypted; never plaintext.
    Column("code_index", String(128), nullable=False, index=True),
    Column("code_ct", LargeBinary, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("used_at", TS, nullable=True),
)
mfa_challenges = Table(
    "mfa_challenges",
    metadata,
    Column("token_hash", LargeBinary(32), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False, index=True),
    # How the first factor was passed ("password", "magic_link"): recorded on the session event.
    Column("first_factor", String(16), nullable=False),
    Column("remember_me", Boolean, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("used_at", TS, nullable=True),
)


@dataclass(frozen=True)
class TotpRow:
    user_id: str
    secret_ct: bytes
    confirmed: bool
    last_used_step: int | None


@dataclass(frozen=True)
class PendingMfa:
    user_id: str
    first_factor: str
    remember_me: bool


def _rowcount(result: object) -> int:
    assert isinstance(result, CursorResult)
    return result.rowcount


class MfaRecords:
    """The second-factor tables, inside one AuthTransaction."""

    def __init__(self, tx: AuthTransaction) -> None:
        self._conn = tx.conn

    # -- TOTP -------------------------------------------------------------------------------

    async def totp(self, user_id: str) -> TotpRow | None:
        row = (
            await self._conn.execute(
                select(totp_credentials).where(totp_credentials.c.user_id == user_id)
            )
        ).first()
        if row is None:
            return None
        return TotpRow(
            user_id=row.user_id,
            secret_ct=bytes(row.secret_ct),
            confirmed=row.confirmed_at is not None,
            last_used_step=row.last_used_step,
        )

    async def start_totp(self, user_id: str, secret_ct: bytes, now: datetime) -> bool:
        """Starts (or restarts) enrolment; False (nothing written) if TOTP is already on.

        One upsert, so two parallel starts can't both insert (a primary-key error) or see
        each other's pending row as "already on".
        """
        upsert = (postgresql.insert if self._conn.dialect.name == "postgresql" else sqlite.insert)(
            totp_credentials
        ).values(user_id=user_id, secret_ct=secret_ct, created_at=now)
        written = await self._conn.execute(
            upsert.on_conflict_do_update(
                index_elements=[totp_credentials.c.user_id],
                set_={"secret_ct": secret_ct, "created_at": now, "last_used_step": None},
                where=totp_credentials.c.confirmed_at.is_(None),
            ).returning(totp_credentials.c.user_id)  # rowcount is -1 for an upsert on psycopg
        )
        return written.first() is not None

    async def confirm_totp(self, user_id: str, secret_ct: bytes, step: int, now: datetime) -> bool:
        """Turns on exactly the enrolment whose secret was checked (not one started since)."""
        result = await self._conn.execute(
            update(totp_credentials)
            .where(
                totp_credentials.c.user_id == user_id,
                totp_credentials.c.confirmed_at.is_(None),
                totp_credentials.c.secret_ct == secret_ct,
            )
            .values(confirmed_at=now, last_used_step=step)
        )
        return _rowcount(result) == 1

    async def use_totp_step(self, user_id: str, step: int) -> bool:
        """Records `step` as used if it is later than every step used before (atomic)."""
        result = await self._conn.execute(
            update(totp_credentials)
            .where(
                totp_credentials.c.user_id == user_id,
                totp_credentials.c.confirmed_at.is_not(None),
                or_(
                    totp_credentials.c.last_used_step.is_(None),
                    totp_credentials.c.last_used_step < step,
                ),
            )
            .values(last_used_step=step)
        )
        return _rowcount(result) == 1

    async def delete_totp(self, user_id: str) -> bool:
        result = await self._conn.execute(
            delete(totp_credentials).where(totp_credentials.c.user_id == user_id)
        )
        await self.delete_backup_codes(user_id)
        return _rowcount(result) == 1

    # -- backup codes -----------------------------------------------------------------------

    async def replace_backup_codes(
        self, user_id: str, codes: Sequence[tuple[str, str, bytes]], now: datetime
    ) -> None:
        """Kills the old set and stores the new one: (id, code_index, code_ct) each."""
        await self.delete_backup_codes(user_id)
        await self._conn.execute(
            insert(backup_codes),
            [
                {
                    "id": code_id,
                    "user_id": user_id,
                    "code_index": index,
                    "code_ct": ct,
                    "created_at": now,
                }
                for code_id, index, ct in codes
            ],
        )

    async def delete_backup_codes(self, user_id: str) -> None:
        await self._conn.execute(delete(backup_codes).where(backup_codes.c.user_id == user_id))

    async def use_backup_code(self, user_id: str, indexes: Sequence[str], now: datetime) -> bool:
        result = await self._conn.execute(
            update(backup_codes)
            .where(
                backup_codes.c.user_id == user_id,
                backup_codes.c.code_index.in_(list(indexes)),
                backup_codes.c.used_at.is_(None),
            )
            .values(used_at=now)
        )
        return _rowcount(result) >= 1

    async def unused_backup_codes(self, user_id: str) -> int:
        return int(
            (
                await self._conn.execute(
                    select(func.count()).where(
                        backup_codes.c.user_id == user_id, backup_codes.c.used_at.is_(None)
                    )
                )
            ).scalar_one()
        )

    # -- pending MFA logins -----------------------------------------------------------------

    async def insert_mfa_challenge(
        self,
        *,
        token_hash: bytes,
        user_id: str,
        first_factor: str,
        remember_me: bool,
        now: datetime,
        expires_at: datetime,
    ) -> None:
        await self._conn.execute(
            insert(mfa_challenges).values(
                token_hash=token_hash,
                user_id=user_id,
                first_factor=first_factor,
                remember_me=remember_me,
                created_at=now,
                expires_at=expires_at,
            )
        )

    async def pending_mfa(self, token_hash: bytes, now: datetime) -> PendingMfa | None:
        row = (
            await self._conn.execute(
                select(mfa_challenges).where(
                    mfa_challenges.c.token_hash == token_hash,
                    mfa_challenges.c.used_at.is_(None),
                    mfa_challenges.c.expires_at > now,
                )
            )
        ).first()
        if row is None:
            return None
        return PendingMfa(row.user_id, row.first_factor, bool(row.remember_me))

    async def consume_mfa_challenge(self, token_hash: bytes, now: datetime) -> bool:
        result = await self._conn.execute(
            update(mfa_challenges)
            .where(
                mfa_challenges.c.token_hash == token_hash,
                mfa_challenges.c.used_at.is_(None),
                mfa_challenges.c.expires_at > now,
            )
            .values(used_at=now)
        )
        return _rowcount(result) == 1

    async def retire_mfa_challenges(self, user_id: str, now: datetime) -> None:
        """Ends the user's pending second steps (their first factor is no longer valid)."""
        await self._conn.execute(
            update(mfa_challenges)
            .where(mfa_challenges.c.user_id == user_id, mfa_challenges.c.used_at.is_(None))
            .values(used_at=now)
        )
