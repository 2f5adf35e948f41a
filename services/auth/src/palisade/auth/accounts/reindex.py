"""`palisade-auth reindex`: moves stored blind indexes to the primary index key version.

Rows keep the index token they were written with. After `palisade-crypto keys rotate --index`
(or a change of the crypto service's normalization, e.g. email case folding), older rows are
found only while their version is usable; this job recomputes every row's token from its stored
ciphertext and ends by telling the crypto service which index versions auth's rows still use,
which is what lets `palisade-crypto keys retire --index` proceed (or refuse).

- Users are walked in id order, one batch at a time: one short read transaction, one batched
  Decrypt and one batched BlindIndex call, then one short write transaction.
- Each write is conditional on the row still holding what was read (token and ciphertext), so
  a concurrent email change is never overwritten; it is counted, and the next run sees it.
- A new email token that another user's row already holds (two addresses that the new
  normalization folds together) is left alone and reported by user id.
- The other rows with a blind index that belong to the batch's users are moved the same way,
  each recomputed from its own ciphertext, and only those still looked up by it (the rest are
  left as they are): unused backup codes; open team invitations the users sent (the invited
  address: a re-invite finds the earlier invitation by it); and pending email changes (the new
  address: confirming one checks it against the address's tokens under usable versions). None
  of these columns is unique, so they have no collisions.
- Idempotent and resumable (`--after USER_ID`); it prints and logs counts and ids, never PII.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, ColumnElement, Table, and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.auth.accounts.email_change import NEW_EMAIL_FIELD
from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT, _pii_aad
from palisade.auth.links.tables import EMAIL_CHANGE, account_tokens
from palisade.auth.mfa.second_factor import BACKUP_CODE_INDEX_CONTEXT, _backup_code_aad
from palisade.auth.mfa.store import backup_codes
from palisade.auth.store import users
from palisade.auth.team.invitation_records import email_aad, invitations
from palisade.common.crypto_client import CryptoClient, CryptoFailure, Normalization

log = logging.getLogger("palisade.auth.reindex")

Sleep = Callable[[float], Awaitable[None]]


@dataclass
class RowCounts:
    """What a run did to one table of user-owned indexed rows (see _OwnedRows)."""

    scanned: int = 0
    updated: int = 0
    # Changed, used up or deleted between our read and our write: left for the next run.
    changed_meanwhile: int = 0


@dataclass
class ReindexResult:
    users_scanned: int = 0
    users_updated: int = 0
    # Changed (or deleted) between our read and our write: left for the next run.
    users_changed_meanwhile: int = 0
    # The new token belongs to another user's row: left alone (ids only, never emails).
    collisions: list[str] = field(default_factory=list)
    # The stored ciphertext could not be decrypted (an integrity fault): left alone.
    unreadable: list[str] = field(default_factory=list)
    codes: RowCounts = field(default_factory=RowCounts)
    invitations: RowCounts = field(default_factory=RowCounts)
    email_changes: RowCounts = field(default_factory=RowCounts)
    last_user_id: str | None = None
    # Index key versions auth's rows still use, per column that has rows looked up by it,
    # after the run (a column without such rows uses none and is left out).
    versions_in_use: dict[str, list[int]] = field(default_factory=dict)
    reported: bool = False

    @property
    def codes_scanned(self) -> int:
        return self.codes.scanned

    @property
    def codes_updated(self) -> int:
        return self.codes.updated

    @property
    def codes_changed_meanwhile(self) -> int:
        return self.codes.changed_meanwhile

    def all_versions(self) -> list[int]:
        return sorted({v for vs in self.versions_in_use.values() for v in vs})

    def lines(self) -> list[str]:
        """What the CLI prints: counts and user ids only."""
        return [
            f"users scanned: {self.users_scanned}",
            f"users updated: {self.users_updated}",
            f"users changed during the run (left for the next run): {self.users_changed_meanwhile}",
            f"collisions (left alone): {len(self.collisions)}"
            + (f" user ids: {' '.join(self.collisions)}" if self.collisions else ""),
            f"unreadable (left alone): {len(self.unreadable)}"
            + (f" user ids: {' '.join(self.unreadable)}" if self.unreadable else ""),
            f"backup codes scanned: {self.codes_scanned}",
            f"backup codes updated: {self.codes_updated}",
            f"backup codes changed during the run: {self.codes_changed_meanwhile}",
            f"invitations scanned: {self.invitations.scanned}",
            f"invitations updated: {self.invitations.updated}",
            f"invitations changed during the run: {self.invitations.changed_meanwhile}",
            f"email changes scanned: {self.email_changes.scanned}",
            f"email changes updated: {self.email_changes.updated}",
            f"email changes changed during the run: {self.email_changes.changed_meanwhile}",
            f"last user id: {self.last_user_id or '-'}",
            "index versions in use: "
            + (", ".join(f"{k}={v}" for k, v in sorted(self.versions_in_use.items())) or "-"),
            f"reported to crypto: {'yes' if self.reported else 'no'}",
        ]


def token_version(token: str) -> int:
    """The key version of a `bi1.<version>.<b64>` token; 0 (below any real one) if malformed."""
    parts = token.split(".")
    if len(parts) == 3 and parts[0] == "bi1" and parts[1].isdigit():
        return int(parts[1])
    return 0


@dataclass(frozen=True)
class _OwnedRows:
    """A table of rows that belong to a user and carry a blind index of a value sealed in the
    row itself; only the `live` rows are ever looked up by it (the others are left alone)."""

    name: str  # "table.column", as versions_in_use names it
    table: Table
    key: str  # the primary key column
    owner: str  # the column naming the user the row belongs to
    index: str  # the blind index column
    ciphertext: str  # what `index` was computed from, sealed by crypto
    live: tuple[ColumnElement[bool], ...]
    # The associated data of a row's ciphertext, and the value indexed from its plaintext;
    # rows as select() reads them (row_key, owner_id, token, ct).
    aad: Callable[[Any], bytes]
    value: Callable[[Any, bytes], str]
    normalization: Normalization
    context: bytes
    counts: str  # the ReindexResult field that counts them

    def column(self, name: str) -> Column[Any]:
        return self.table.c[name]

    def select(self) -> Any:
        return (
            select(
                self.column(self.key).label("row_key"),
                self.column(self.owner).label("owner_id"),
                self.column(self.index).label("token"),
                self.column(self.ciphertext).label("ct"),
            )
            .where(*self.live)
            .order_by(self.column(self.key))
        )


OWNED_ROWS = (
    _OwnedRows(
        name="backup_codes.code_index",
        table=backup_codes,
        key="id",
        owner="user_id",
        index="code_index",
        ciphertext="code_ct",
        live=(backup_codes.c.used_at.is_(None),),
        aad=lambda r: _backup_code_aad(r.owner_id, r.row_key),
        value=lambda r, plain: f"{r.owner_id}:{plain.decode()}",
        normalization=Normalization.EXACT,
        context=BACKUP_CODE_INDEX_CONTEXT,
        counts="codes",
    ),
    # Open invitations, by who sent them (every invitation has a sender with a user row).
    _OwnedRows(
        name="invitations.email_index",
        table=invitations,
        key="id",
        owner="created_by",
        index="email_index",
        ciphertext="email_ct",
        # (An expired one's address may be erased already: team/invitation_records.py.)
        live=(invitations.c.used_at.is_(None), func.length(invitations.c.email_ct) > 0),
        aad=lambda r: email_aad(r.row_key),
        value=lambda _r, plain: plain.decode(),
        normalization=Normalization.EMAIL,
        context=EMAIL_INDEX_CONTEXT,
        counts="invitations",
    ),
    # Email changes not confirmed, retired or replaced yet: the new address.
    _OwnedRows(
        name="account_tokens.new_email_index",
        table=account_tokens,
        key="token_hash",
        owner="user_id",
        index="new_email_index",
        ciphertext="new_email_ct",
        live=(
            account_tokens.c.purpose == EMAIL_CHANGE.name,
            account_tokens.c.consumed_at.is_(None),
            account_tokens.c.new_email_index.is_not(None),
            account_tokens.c.new_email_ct.is_not(None),
        ),
        aad=lambda r: _pii_aad(r.owner_id, NEW_EMAIL_FIELD),
        value=lambda _r, plain: plain.decode(),
        normalization=Normalization.EMAIL,
        context=EMAIL_INDEX_CONTEXT,
        counts="email_changes",
    ),
)


class Reindexer:
    def __init__(
        self,
        *,
        engine: AsyncEngine,
        crypto: CryptoClient,
        batch_size: int = 200,
        pause_seconds: float = 0.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._engine = engine
        self._crypto = crypto
        self._batch_size = batch_size
        self._pause = pause_seconds
        self._sleep = sleep

    async def run(self, *, after: str | None = None, report: bool = True) -> ReindexResult:
        result = ReindexResult(last_user_id=after)
        cursor = after or ""
        first = True
        while True:
            if not first and self._pause > 0:
                await self._sleep(self._pause)  # rate limit: production keeps serving
            first = False
            async with self._engine.begin() as conn:
                rows = (
                    await conn.execute(
                        select(users.c.id, users.c.email_index, users.c.email_ct)
                        # A deleted account has no address left (accounts/deletion.py).
                        .where(users.c.id > cursor, users.c.deleted_at.is_(None))
                        .order_by(users.c.id)
                        .limit(self._batch_size)
                    )
                ).all()
            if not rows:
                break
            await self._users_batch(rows, result)
            for kind in OWNED_ROWS:
                await self._owned_by(kind, [r.id for r in rows], result)
            cursor = rows[-1].id
            result.last_user_id = cursor
            log.info(
                "reindex batch done",
                extra={"users_scanned": result.users_scanned, "last_user_id": cursor},
            )
        result.versions_in_use = await self.versions_in_use()
        if report:
            await self._crypto.report_index_versions(result.all_versions())
            result.reported = True
        return result

    # -- users ------------------------------------------------------------------------------

    async def _users_batch(self, rows: Sequence[Any], result: ReindexResult) -> None:
        result.users_scanned += len(rows)
        emails = await self._decrypt(
            [(r.id, r.email_ct, _pii_aad(r.id, "email")) for r in rows], result
        )
        readable = [r for r in rows if r.id in emails]
        tokens = await self._crypto.blind_index_many(
            [emails[r.id].decode() for r in readable], Normalization.EMAIL, EMAIL_INDEX_CONTEXT
        )
        stale = [
            (r, new[0]) for r, new in zip(readable, tokens, strict=True) if new[0] != r.email_index
        ]
        if not stale:
            return
        async with self._engine.begin() as conn:
            for row, token in stale:
                outcome = await self._conditional(
                    conn,
                    update(users)
                    .where(
                        users.c.id == row.id,
                        users.c.email_index == row.email_index,
                        users.c.email_ct == row.email_ct,
                    )
                    .values(email_index=token),
                )
                if outcome == "updated":
                    result.users_updated += 1
                elif outcome == "collision":
                    result.collisions.append(row.id)
                else:
                    result.users_changed_meanwhile += 1

    async def _decrypt(
        self, items: Sequence[tuple[Any, bytes, bytes]], result: ReindexResult
    ) -> dict[Any, bytes]:
        """Plaintexts by row id; a batch with a bad item is retried item by item."""
        try:
            plaintexts = await self._crypto.decrypt([(ct, aad) for _, ct, aad in items])
            return {key: p for (key, _, _), p in zip(items, plaintexts, strict=True)}
        except CryptoFailure:
            out: dict[Any, bytes] = {}
            for key, ct, aad in items:
                try:
                    [out[key]] = await self._crypto.decrypt([(ct, aad)])
                except CryptoFailure:
                    result.unreadable.append(key)
            return out

    # -- rows that belong to the batch's users ------------------------------------------------

    async def _owned_by(
        self, kind: _OwnedRows, user_ids: Sequence[str], result: ReindexResult
    ) -> None:
        async with self._engine.begin() as conn:
            rows = (
                await conn.execute(kind.select().where(kind.column(kind.owner).in_(list(user_ids))))
            ).all()
        for start in range(0, len(rows), self._batch_size):
            await self._owned_batch(kind, rows[start : start + self._batch_size], result)

    async def _owned_batch(
        self, kind: _OwnedRows, rows: Sequence[Any], result: ReindexResult
    ) -> None:
        counts: RowCounts = getattr(result, kind.counts)
        counts.scanned += len(rows)
        ignored = ReindexResult()  # an unreadable row only stays where it is
        plain = await self._decrypt([(r.row_key, bytes(r.ct), kind.aad(r)) for r in rows], ignored)
        readable = [r for r in rows if r.row_key in plain]
        tokens = await self._crypto.blind_index_many(
            [kind.value(r, plain[r.row_key]) for r in readable], kind.normalization, kind.context
        )
        stale = [(r, new[0]) for r, new in zip(readable, tokens, strict=True) if new[0] != r.token]
        if not stale:
            return
        async with self._engine.begin() as conn:
            for row, token in stale:
                outcome = await self._conditional(
                    conn,
                    update(kind.table)
                    .where(
                        kind.column(kind.key) == row.row_key,
                        kind.column(kind.index) == row.token,
                        *kind.live,
                    )
                    .values({kind.index: token}),
                )
                if outcome == "updated":
                    counts.updated += 1
                else:
                    counts.changed_meanwhile += 1

    # -- shared -----------------------------------------------------------------------------

    @staticmethod
    async def _conditional(conn: AsyncConnection, statement: Any) -> str:
        """ "updated", "changed" (the row no longer holds what was read) or "collision"."""
        try:
            async with conn.begin_nested():
                rowcount = (await conn.execute(statement)).rowcount
        except IntegrityError:
            return "collision"
        return "updated" if rowcount == 1 else "changed"

    async def versions_in_use(self) -> dict[str, list[int]]:
        """Distinct index key versions of every indexed column (whole tables, now), counting
        only the rows still looked up by their index; columns without such rows are left out."""
        columns: dict[str, tuple[Column[Any], tuple[ColumnElement[bool], ...]]] = {
            "users.email_index": (users.c.email_index, (users.c.deleted_at.is_(None),)),
            **{kind.name: (kind.column(kind.index), kind.live) for kind in OWNED_ROWS},
        }
        out: dict[str, list[int]] = {}
        async with self._engine.connect() as conn:
            for name, (column, live) in columns.items():
                query = select(self._version_expr(column)).distinct()
                if live:
                    query = query.where(and_(*live))
                values = (await conn.execute(query)).scalars().all()
                if values:
                    out[name] = sorted({_as_version(v) for v in values})
        return out

    def _version_expr(self, column: Column[Any]) -> Any:
        """SQL for the text between the first and second dot of a token."""
        if self._engine.dialect.name == "postgresql":
            return func.split_part(column, ".", 2)
        rest = func.substr(column, 5)  # after "bi1."
        return func.substr(rest, 1, func.instr(rest, ".") - 1)


def _as_version(text: object) -> int:
    value = str(text or "")
    return int(value) if value.isdigit() else 0


@asynccontextmanager
async def crypto_and_engine(settings: Any) -> AsyncIterator[tuple[CryptoClient, AsyncEngine]]:
    """For operator commands (reindex, subjects migrate): auth's database engine and crypto
    client as the service builds them, closed when the block ends."""
    from palisade.auth.config import SERVICE_NAME
    from palisade.common.caller import AssertionSigner
    from palisade.common.clock import SystemClock
    from palisade.common.db import create_engine, resolve_database_url
    from palisade.common.edge_keys import open_service_keys
    from palisade.common.grpc_client import ServiceIdentity, insecure_channel

    clock = SystemClock()
    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp())
    signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=settings.assertion_ttl_seconds)
    signer.require_edge("crypto")
    engine = create_engine(
        resolve_database_url(
            settings.database_url, data_dir=settings.data_dir, service=SERVICE_NAME
        )
    )
    channel = insecure_channel(settings.crypto_target)
    try:
        yield (
            CryptoClient(
                channel=channel, identity=ServiceIdentity(name=SERVICE_NAME, signer=signer)
            ),
            engine,
        )
    finally:
        await channel.close(None)
        await engine.dispose()


async def reindex_from_settings(
    settings: Any, *, after: str | None, print_line: Callable[[str], None] = print
) -> ReindexResult:
    """The CLI's job: auth's database and crypto client as the service builds them."""
    async with crypto_and_engine(settings) as (crypto, engine):
        result = await Reindexer(
            engine=engine,
            crypto=crypto,
            batch_size=settings.reindex_batch_size,
            pause_seconds=settings.reindex_pause_seconds,
        ).run(after=after)
    for line in result.lines():
        print_line(line)
    return result
