"""`palisade-auth subjects migrate`: moves what auth sealed before subject keys under them.

Rows written before auth sealed users' PII under their subject key (auth/subjects.py) hold
format 1 envelopes, which a ShredSubject does not reach. This job re-seals each of them under
its user's subject, with the same associated data: users.email_ct and users.name_ct, TOTP
secrets, backup codes, the sealed new address of email changes, and the address of an
invitation the user accepted. Auth may read its own
users' plaintext, so it decrypts and encrypts again (crypto's Rewrap keeps an item's subject,
it does not add one); the plaintext exists only in this process's memory, per batch.

- Each column is walked in key order, a batch at a time: one short read of rows still in
  format 1 (the envelope's first byte), one Decrypt, one Encrypt naming each row's subject,
  then one short write transaction.
- Each write is conditional on the row still holding the ciphertext that was read, so a
  concurrent change (an email change confirmed, a TOTP enrolment restarted, an account
  deleted) always wins: that row is counted as changed meanwhile and left as the change made
  it (new writes are sealed under the subject already).
- Idempotent and resumable: only format 1 rows are read, so a run stopped anywhere (crypto
  down, a deploy) is finished by the next one, and a finished job does nothing.
- Reads never depend on it: a format 1 and a format 2 envelope decrypt alike, so every row
  reads the same before, during and after.
- A row crypto cannot open is left alone and reported by its user id; a user erased between
  the read and the encryption (deleted meanwhile) is skipped (crypto refuses to encrypt for
  a shredded subject). Progress goes to the log and the metrics as counts, never PII.

Not migrated: queued emails sealed before this (mail_outbox names no recipient account for
them; they are sent, or given up, within hours, and dropped from the database when sent), and
refresh-token successors (a token, not personal data; a deletion erases them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import ColumnElement, LargeBinary, Table, func, literal, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.auth.accounts.email_change import NEW_EMAIL_FIELD
from palisade.auth.accounts.service import _pii_aad
from palisade.auth.links.tables import account_tokens
from palisade.auth.mfa.second_factor import _backup_code_aad, _totp_aad
from palisade.auth.mfa.store import backup_codes, totp_credentials
from palisade.auth.store import users
from palisade.auth.subjects import NO_SUBJECT_ENVELOPE_FORMAT, user_subject
from palisade.auth.team.invitation_records import email_aad, invitations
from palisade.common.crypto_client import CryptoClient, CryptoFailure, SubjectErased
from palisade.common.outbox_claims import exponential_backoff

log = logging.getLogger("palisade.auth.subject_migration")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class SealedColumn:
    """A column of envelopes that each belong to one user (the `owner` column)."""

    name: str  # "table.column", as the counts and metrics name it
    table: Table
    key: str  # the primary key column
    owner: str  # the column naming the user
    column: str  # the envelopes
    aad: Callable[[Any], bytes]  # a row's associated data, from (row_key, owner_id)
    where: tuple[ColumnElement[bool], ...] = ()

    def old_rows(self) -> ColumnElement[bool]:
        """Rows whose envelope is a format 1 one (sealed under no subject)."""
        first_byte = func.substr(self.table.c[self.column], 1, 1)
        return first_byte == literal(bytes([NO_SUBJECT_ENVELOPE_FORMAT]), LargeBinary)


COLUMNS = (
    # A deleted account's row holds no ciphertext at all (accounts/deletion.py).
    SealedColumn(
        name="users.email_ct",
        table=users,
        key="id",
        owner="id",
        column="email_ct",
        aad=lambda r: _pii_aad(r.owner_id, "email"),
        where=(users.c.deleted_at.is_(None),),
    ),
    SealedColumn(
        name="users.name_ct",
        table=users,
        key="id",
        owner="id",
        column="name_ct",
        aad=lambda r: _pii_aad(r.owner_id, "name"),
        where=(users.c.deleted_at.is_(None),),
    ),
    SealedColumn(
        name="totp_credentials.secret_ct",
        table=totp_credentials,
        key="user_id",
        owner="user_id",
        column="secret_ct",
        aad=lambda r: _totp_aad(r.owner_id),
    ),
    SealedColumn(
        name="backup_codes.code_ct",
        table=backup_codes,
        key="id",
        owner="user_id",
        column="code_ct",
        aad=lambda r: _backup_code_aad(r.owner_id, r.row_key),
    ),
    # An invitation accepted before subject keys: its address is the member's.
    SealedColumn(
        name="invitations.email_ct",
        table=invitations,
        key="id",
        owner="accepted_by",
        column="email_ct",
        aad=lambda r: email_aad(r.row_key),
        where=(invitations.c.accepted_by.is_not(None),),
    ),
    SealedColumn(
        name="account_tokens.new_email_ct",
        table=account_tokens,
        key="token_hash",
        owner="user_id",
        column="new_email_ct",
        aad=lambda r: _pii_aad(r.owner_id, NEW_EMAIL_FIELD),
        where=(account_tokens.c.new_email_ct.is_not(None),),
    ),
)


@dataclass
class ColumnCounts:
    scanned: int = 0
    migrated: int = 0
    # Written by someone else between our read and our write: theirs stands.
    changed_meanwhile: int = 0
    # The user was erased (their subject shredded) before we could seal: nothing to keep.
    erased: int = 0
    # Crypto could not open the stored envelope (an integrity fault): left alone, by user id.
    unreadable: list[str] = field(default_factory=list)


@dataclass
class MigrationResult:
    columns: dict[str, ColumnCounts] = field(
        default_factory=lambda: {c.name: ColumnCounts() for c in COLUMNS}
    )
    # Format 1 envelopes left after the run, per column (unreadable ones, and any written
    # meanwhile by a replica that predates subject keys).
    remaining: dict[str, int] = field(default_factory=dict)

    @property
    def migrated(self) -> int:
        return sum(c.migrated for c in self.columns.values())

    @property
    def changed_meanwhile(self) -> int:
        return sum(c.changed_meanwhile for c in self.columns.values())

    @property
    def unreadable(self) -> list[str]:
        return [u for c in self.columns.values() for u in c.unreadable]

    def lines(self) -> list[str]:
        """What the CLI prints: counts and user ids only."""
        out = []
        for name, counts in self.columns.items():
            out.append(
                f"{name}: scanned {counts.scanned}, migrated {counts.migrated}, changed during"
                f" the run {counts.changed_meanwhile}, erased {counts.erased}, unreadable"
                f" {len(counts.unreadable)}"
                + (f" (user ids: {' '.join(counts.unreadable)})" if counts.unreadable else "")
                + f", left without a subject {self.remaining.get(name, 0)}"
            )
        return out


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.remaining = Gauge(
            "palisade_auth_subject_migration_remaining",
            "Stored envelopes still sealed under no subject key, by column (after the last"
            " pass of the subject migration).",
            ("column",),
            registry=registry,
        )
        self.rows = Counter(
            "palisade_auth_subject_migration_rows",
            "Envelopes the subject migration handled, by column and outcome (migrated,"
            " changed_meanwhile, erased, unreadable).",
            ("column", "outcome"),
            registry=registry,
        )


class SubjectMigration:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        crypto: CryptoClient,
        batch_size: int = 200,
        pause_seconds: float = 0.0,
        sleep: Sleep = asyncio.sleep,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._engine = engine
        self._crypto = crypto
        self._batch_size = batch_size
        self._pause = pause_seconds
        self._sleep = sleep
        self._metrics = _Metrics(registry or CollectorRegistry())

    async def run(self) -> MigrationResult:
        """One walk over every column. Raises Unavailable if crypto is down (what was written
        stays written; run again to go on)."""
        result = MigrationResult()
        first = True
        for column in COLUMNS:
            counts = result.columns[column.name]
            cursor: Any = None
            while True:
                if not first and self._pause > 0:
                    await self._sleep(self._pause)  # leave crypto room for live traffic
                first = False
                rows = await self._read(column, cursor)
                if not rows:
                    break
                await self._batch(column, rows, counts)
                cursor = rows[-1].row_key
                log.info(
                    "subject migration batch done",
                    extra={
                        "column": column.name,
                        "scanned": counts.scanned,
                        "migrated": counts.migrated,
                        "changed_meanwhile": counts.changed_meanwhile,
                    },
                )
        result.remaining = await self.remaining()
        log.info(
            "subject migration pass done",
            extra={
                "migrated": result.migrated,
                "changed_meanwhile": result.changed_meanwhile,
                "unreadable": len(result.unreadable),
                "remaining": sum(result.remaining.values()),
            },
        )
        return result

    async def remaining(self) -> dict[str, int]:
        """Envelopes still sealed under no subject, per column (also set on the gauge)."""
        out: dict[str, int] = {}
        async with self._engine.connect() as conn:
            for column in COLUMNS:
                query = (
                    select(func.count())
                    .select_from(column.table)
                    .where(column.old_rows(), *column.where)
                )
                out[column.name] = int((await conn.execute(query)).scalar_one())
                self._metrics.remaining.labels(column.name).set(out[column.name])
        return out

    async def _read(self, column: SealedColumn, cursor: Any) -> Sequence[Any]:
        key = column.table.c[column.key]
        query = (
            select(
                key.label("row_key"),
                column.table.c[column.owner].label("owner_id"),
                column.table.c[column.column].label("ct"),
            )
            .where(column.old_rows(), *column.where)
            .order_by(key)
            .limit(self._batch_size)
        )
        if cursor is not None:
            query = query.where(key > cursor)
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).all()

    async def _batch(self, column: SealedColumn, rows: Sequence[Any], counts: ColumnCounts) -> None:
        counts.scanned += len(rows)
        plain = await self._decrypt(column, rows, counts)
        readable = [r for r in rows if r.row_key in plain]
        sealed = await self._encrypt(column, readable, plain, counts)
        migrated = changed = 0
        table, key = column.table, column.table.c[column.key]
        async with self._engine.begin() as conn:
            for row in readable:
                if row.row_key not in sealed:
                    continue
                written = await conn.execute(
                    update(table)
                    .where(key == row.row_key, table.c[column.column] == row.ct, *column.where)
                    .values({column.column: sealed[row.row_key]})
                )
                if int(written.rowcount) == 1:
                    migrated += 1
                else:
                    changed += 1
        counts.migrated += migrated
        counts.changed_meanwhile += changed
        self._metrics.rows.labels(column.name, "migrated").inc(migrated)
        self._metrics.rows.labels(column.name, "changed_meanwhile").inc(changed)

    async def _decrypt(
        self, column: SealedColumn, rows: Sequence[Any], counts: ColumnCounts
    ) -> dict[Any, bytes]:
        """Plaintexts by row key; a batch with a bad item is retried item by item."""
        items = [(bytes(r.ct), column.aad(r)) for r in rows]
        try:
            plaintexts = await self._crypto.decrypt(items)
            return {r.row_key: p for r, p in zip(rows, plaintexts, strict=True)}
        except CryptoFailure:
            out: dict[Any, bytes] = {}
            for row, item in zip(rows, items, strict=True):
                try:
                    [out[row.row_key]] = await self._crypto.decrypt([item])
                except CryptoFailure:
                    counts.unreadable.append(str(row.owner_id))
                    self._metrics.rows.labels(column.name, "unreadable").inc()
                    log.error(
                        "subject migration: a stored envelope does not open; left as it is",
                        extra={"column": column.name, "user_id": row.owner_id},
                    )
            return out

    async def _encrypt(
        self,
        column: SealedColumn,
        rows: Sequence[Any],
        plain: dict[Any, bytes],
        counts: ColumnCounts,
    ) -> dict[Any, bytes]:
        """New envelopes by row key, each under its user's subject; a batch naming a subject
        shredded meanwhile is retried item by item, and that user's rows skipped."""
        items = [(plain[r.row_key], column.aad(r), user_subject(r.owner_id)) for r in rows]
        try:
            envelopes = await self._crypto.encrypt(items)
            return {r.row_key: e for r, e in zip(rows, envelopes, strict=True)}
        except SubjectErased:
            out: dict[Any, bytes] = {}
            for row, item in zip(rows, items, strict=True):
                try:
                    [out[row.row_key]] = await self._crypto.encrypt([item])
                except SubjectErased:
                    counts.erased += 1
                    self._metrics.rows.labels(column.name, "erased").inc()
            return out


async def migrate_until_done(
    migration: SubjectMigration,
    *,
    sleep: Sleep = asyncio.sleep,
    first_retry_seconds: float = 1.0,
    max_retry_seconds: float = 300.0,
) -> MigrationResult:
    """What a service runs in the background at start: passes until one finds nothing that
    changed under it (the rows another writer changed meanwhile get another look), retried
    with backoff while crypto or the database is away. Ends; never raises but to cancel."""
    failures = 0
    while True:
        try:
            result = await migration.run()
        except Exception as error:  # crypto down, a database blip: what was done stays done
            failures += 1
            delay = exponential_backoff(
                failures, first_seconds=first_retry_seconds, max_seconds=max_retry_seconds
            )
            log.warning(
                "subject migration pass failed; will retry",
                extra={"reason": type(error).__name__, "retry_seconds": delay.total_seconds()},
            )
            await sleep(delay.total_seconds())
            continue
        failures = 0
        if not result.changed_meanwhile:
            return result
        await sleep(first_retry_seconds)


async def migrate_from_settings(
    settings: Any, *, print_line: Callable[[str], None] = print
) -> MigrationResult:
    """The CLI's job (`palisade-auth subjects migrate`): auth's database and crypto client as
    the service builds them, one pass."""
    from palisade.auth.accounts.reindex import crypto_and_engine

    async with crypto_and_engine(settings) as (crypto, engine):
        result = await SubjectMigration(
            engine=engine,
            crypto=crypto,
            batch_size=settings.subject_migration_batch_size,
            pause_seconds=settings.subject_migration_pause_seconds,
        ).run()
    for line in result.lines():
        print_line(line)
    return result
