"""Tables and queries for passkeys: credentials, WebAuthn user handles and challenges.

A challenge is consumed by one conditional UPDATE (`... WHERE used_at IS NULL AND expires_at >
now`) whose row count decides the winner, so of any number of concurrent uses, on any number of
replicas, at most one proceeds, on Postgres and SQLite alike. A credential id is unique across
all users (a database constraint, not only a check).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

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
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import CursorResult, Row

from palisade.auth.store import AuthTransaction, metadata
from palisade.common.db import UTCDateTime

TS = UTCDateTime()
CHALLENGE_ID_PREFIX = "wch_"
REGISTRATION = "registration"
AUTHENTICATION = "authentication"

passkeys = Table(
    "passkeys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), nullable=False, index=True),
    # The raw credential id from the authenticator; one user only, ever at a time.
    Column("credential_id", LargeBinary(1023), nullable=False, unique=True),
    Column("public_key", LargeBinary, nullable=False),  # COSE_Key, as the authenticator sent it
    Column("sign_count", BigInteger, nullable=False),
    Column("transports", String(200), nullable=False),  # comma-separated hints, maybe empty
    Column("aaguid", String(36), nullable=False),
    Column("backup_eligible", Boolean, nullable=False),
    Column("backed_up", Boolean, nullable=False),
    Column("name", String(100), nullable=False),
    Column("created_at", TS, nullable=False),
    Column("last_used_at", TS, nullable=True),
)
webauthn_user_handles = Table(
    "webauthn_user_handles",
    metadata,
    Column("user_id", String(40), ForeignKey("users.id"), primary_key=True),
    # Random, per user: authenticators store it, so it must not be the user id or the email.
    Column("user_handle", LargeBinary(64), nullable=False, unique=True),
    Column("created_at", TS, nullable=False),
)
webauthn_challenges = Table(
    "webauthn_challenges",
    metadata,
    Column("id", String(64), primary_key=True),  # "wch_" + 256 random bits, held by the client
    Column("challenge", LargeBinary(64), nullable=False),
    Column("purpose", String(16), nullable=False),  # registration | authentication
    # Registration: the user. Login with an email: that user, or NULL for an unknown email (then
    # no credential matches). Discoverable login: NULL, and `discoverable` is true.
    Column("user_id", String(40), ForeignKey("users.id"), nullable=True, index=True),
    Column("discoverable", Boolean, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False, index=True),
    Column("used_at", TS, nullable=True),
)


@dataclass(frozen=True)
class PasskeyRow:
    id: str
    user_id: str
    credential_id: bytes
    public_key: bytes
    sign_count: int
    transports: tuple[str, ...]
    aaguid: str
    backup_eligible: bool
    backed_up: bool
    name: str
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class ChallengeRow:
    id: str
    challenge: bytes
    purpose: str
    user_id: str | None
    discoverable: bool


def _rowcount(result: object) -> int:
    assert isinstance(result, CursorResult)
    return result.rowcount


def _passkey(row: Row[object]) -> PasskeyRow:
    m = row._mapping
    return PasskeyRow(
        id=m["id"],
        user_id=m["user_id"],
        credential_id=bytes(m["credential_id"]),
        public_key=bytes(m["public_key"]),
        sign_count=int(m["sign_count"]),
        transports=tuple(t for t in m["transports"].split(",") if t),
        aaguid=m["aaguid"],
        backup_eligible=bool(m["backup_eligible"]),
        backed_up=bool(m["backed_up"]),
        name=m["name"],
        created_at=m["created_at"],
        last_used_at=m["last_used_at"],
    )


class PasskeyRecords:
    """The passkey tables, inside one AuthTransaction."""

    def __init__(self, tx: AuthTransaction) -> None:
        self._conn = tx.conn
        self._locks = tx.locks_rows

    # -- challenges -------------------------------------------------------------------------

    async def add_challenge(
        self,
        *,
        challenge_id: str,
        challenge: bytes,
        purpose: str,
        user_id: str | None,
        discoverable: bool,
        now: datetime,
        lifetime: timedelta,
    ) -> None:
        # Challenges live minutes; dropping expired ones here keeps the table small.
        await self._conn.execute(
            delete(webauthn_challenges).where(webauthn_challenges.c.expires_at <= now)
        )
        await self._conn.execute(
            insert(webauthn_challenges).values(
                id=challenge_id,
                challenge=challenge,
                purpose=purpose,
                user_id=user_id,
                discoverable=discoverable,
                created_at=now,
                expires_at=now + lifetime,
            )
        )

    async def consume_challenge(
        self, challenge_id: str, *, purpose: str, user_id: str | None, now: datetime
    ) -> ChallengeRow | None:
        """Marks the challenge used if it is live, unused and for this purpose (and user)."""
        if not challenge_id.startswith(CHALLENGE_ID_PREFIX) or len(challenge_id) > 64:
            return None  # cannot be one of ours: no query
        conditions = [
            webauthn_challenges.c.id == challenge_id,
            webauthn_challenges.c.purpose == purpose,
            webauthn_challenges.c.used_at.is_(None),
            webauthn_challenges.c.expires_at > now,
        ]
        if user_id is not None:
            conditions.append(webauthn_challenges.c.user_id == user_id)
        result = await self._conn.execute(
            update(webauthn_challenges).where(*conditions).values(used_at=now)
        )
        if _rowcount(result) != 1:
            return None
        row = (
            await self._conn.execute(
                select(webauthn_challenges).where(webauthn_challenges.c.id == challenge_id)
            )
        ).one()
        return ChallengeRow(
            id=row.id,
            challenge=bytes(row.challenge),
            purpose=row.purpose,
            user_id=row.user_id,
            discoverable=bool(row.discoverable),
        )

    # -- user handles -----------------------------------------------------------------------

    async def user_handle(self, user_id: str) -> bytes | None:
        value = (
            await self._conn.execute(
                select(webauthn_user_handles.c.user_handle).where(
                    webauthn_user_handles.c.user_id == user_id
                )
            )
        ).scalar_one_or_none()
        return None if value is None else bytes(value)

    async def ensure_user_handle(self, user_id: str, candidate: bytes, now: datetime) -> bytes:
        """The user's handle; `candidate` becomes it if there is none yet (race-safe)."""
        values = {"user_id": user_id, "user_handle": candidate, "created_at": now}
        if self._conn.dialect.name == "postgresql":
            await self._conn.execute(
                pg_insert(webauthn_user_handles)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["user_id"])
            )
        else:
            await self._conn.execute(
                sqlite_insert(webauthn_user_handles)
                .values(**values)
                .on_conflict_do_nothing(index_elements=["user_id"])
            )
        handle = await self.user_handle(user_id)
        assert handle is not None
        return handle

    # -- credentials ------------------------------------------------------------------------

    async def of_user(self, user_id: str) -> list[PasskeyRow]:
        rows = await self._conn.execute(
            select(passkeys)
            .where(passkeys.c.user_id == user_id)
            .order_by(passkeys.c.created_at, passkeys.c.id)
        )
        return [_passkey(r) for r in rows]

    async def count(self, user_id: str) -> int:
        return int(
            (
                await self._conn.execute(
                    select(func.count()).select_from(passkeys).where(passkeys.c.user_id == user_id)
                )
            ).scalar_one()
        )

    async def get(self, user_id: str, passkey_id: str) -> PasskeyRow | None:
        row = (
            await self._conn.execute(
                select(passkeys).where(passkeys.c.id == passkey_id, passkeys.c.user_id == user_id)
            )
        ).first()
        return None if row is None else _passkey(row)

    async def by_credential_id(self, credential_id: bytes, *, lock: bool) -> PasskeyRow | None:
        """The credential (any user's), locked for this transaction's decision if asked."""
        query = select(passkeys).where(passkeys.c.credential_id == credential_id)
        if lock and self._locks:
            query = query.with_for_update()
        row = (await self._conn.execute(query)).first()
        return None if row is None else _passkey(row)

    async def insert(self, row: PasskeyRow) -> None:
        """Adds a credential; raises IntegrityError if its credential id is taken."""
        async with self._conn.begin_nested():  # a savepoint: the caller's transaction survives
            await self._conn.execute(
                insert(passkeys).values(
                    id=row.id,
                    user_id=row.user_id,
                    credential_id=row.credential_id,
                    public_key=row.public_key,
                    sign_count=row.sign_count,
                    transports=",".join(row.transports),
                    aaguid=row.aaguid,
                    backup_eligible=row.backup_eligible,
                    backed_up=row.backed_up,
                    name=row.name,
                    created_at=row.created_at,
                    last_used_at=row.last_used_at,
                )
            )

    async def record_use(
        self, passkey_id: str, *, sign_count: int, backed_up: bool, now: datetime
    ) -> None:
        await self._conn.execute(
            update(passkeys)
            .where(passkeys.c.id == passkey_id)
            .values(sign_count=sign_count, backed_up=backed_up, last_used_at=now)
        )

    async def rename(self, user_id: str, passkey_id: str, name: str) -> bool:
        result = await self._conn.execute(
            update(passkeys)
            .where(passkeys.c.id == passkey_id, passkeys.c.user_id == user_id)
            .values(name=name)
        )
        return _rowcount(result) == 1

    async def delete(self, user_id: str, passkey_id: str) -> bool:
        result = await self._conn.execute(
            delete(passkeys).where(passkeys.c.id == passkey_id, passkeys.c.user_id == user_id)
        )
        return _rowcount(result) == 1

    async def delete_user(self, user_id: str) -> Sequence[str]:
        """Removes everything passkey-related of a user (account deletion); the passkey ids."""
        ids = [p.id for p in await self.of_user(user_id)]
        await self._conn.execute(delete(passkeys).where(passkeys.c.user_id == user_id))
        await self._conn.execute(
            delete(webauthn_challenges).where(webauthn_challenges.c.user_id == user_id)
        )
        await self._conn.execute(
            delete(webauthn_user_handles).where(webauthn_user_handles.c.user_id == user_id)
        )
        return ids
