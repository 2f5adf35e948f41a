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
- Unused backup codes of the batch's users are moved the same way (their tokens are recomputed
  from the encrypted code; used codes are never looked up and are left as they are).
- Idempotent and resumable (`--after USER_ID`); it prints and logs counts and ids, never PII.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from palisade.auth.accounts.service import EMAIL_INDEX_CONTEXT, _pii_aad
from palisade.auth.mfa.second_factor import BACKUP_CODE_INDEX_CONTEXT, _backup_code_aad
from palisade.auth.mfa.store import backup_codes
from palisade.auth.store import users
from palisade.common.crypto_client import CryptoClient, CryptoFailure, Normalization

log = logging.getLogger("palisade.auth.reindex")

Sleep = Callable[[float], Awaitable[None]]


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
    codes_scanned: int = 0
    codes_updated: int = 0
    codes_changed_meanwhile: int = 0
    last_user_id: str | None = None
    # Index key versions auth's rows still use, per column, after the run.
    versions_in_use: dict[str, list[int]] = field(default_factory=dict)
    reported: bool = False

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
                        .where(users.c.id > cursor)
                        .order_by(users.c.id)
                        .limit(self._batch_size)
                    )
                ).all()
            if not rows:
                break
            await self._users_batch(rows, result)
            await self._codes_of([r.id for r in rows], result)
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
        self, items: Sequence[tuple[str, bytes, bytes]], result: ReindexResult
    ) -> dict[str, bytes]:
        """Plaintexts by row id; a batch with a bad item is retried item by item."""
        try:
            plaintexts = await self._crypto.decrypt([(ct, aad) for _, ct, aad in items])
            return {key: p for (key, _, _), p in zip(items, plaintexts, strict=True)}
        except CryptoFailure:
            out: dict[str, bytes] = {}
            for key, ct, aad in items:
                try:
                    [out[key]] = await self._crypto.decrypt([(ct, aad)])
                except CryptoFailure:
                    result.unreadable.append(key)
            return out

    # -- backup codes -----------------------------------------------------------------------

    async def _codes_of(self, user_ids: Sequence[str], result: ReindexResult) -> None:
        async with self._engine.begin() as conn:
            codes = (
                await conn.execute(
                    select(
                        backup_codes.c.id,
                        backup_codes.c.user_id,
                        backup_codes.c.code_index,
                        backup_codes.c.code_ct,
                    )
                    .where(
                        backup_codes.c.user_id.in_(list(user_ids)),
                        backup_codes.c.used_at.is_(None),
                    )
                    .order_by(backup_codes.c.id)
                )
            ).all()
        for start in range(0, len(codes), self._batch_size):
            await self._codes_batch(codes[start : start + self._batch_size], result)

    async def _codes_batch(self, codes: Sequence[Any], result: ReindexResult) -> None:
        result.codes_scanned += len(codes)
        ignored = ReindexResult()  # an unreadable code only stays where it is
        plain = await self._decrypt(
            [(c.id, c.code_ct, _backup_code_aad(c.user_id, c.id)) for c in codes], ignored
        )
        readable = [c for c in codes if c.id in plain]
        tokens = await self._crypto.blind_index_many(
            [f"{c.user_id}:{plain[c.id].decode()}" for c in readable],
            Normalization.EXACT,
            BACKUP_CODE_INDEX_CONTEXT,
        )
        stale = [
            (c, new[0]) for c, new in zip(readable, tokens, strict=True) if new[0] != c.code_index
        ]
        if not stale:
            return
        async with self._engine.begin() as conn:
            for code, token in stale:
                outcome = await self._conditional(
                    conn,
                    update(backup_codes)
                    .where(
                        backup_codes.c.id == code.id,
                        backup_codes.c.code_index == code.code_index,
                        backup_codes.c.used_at.is_(None),
                    )
                    .values(code_index=token),
                )
                if outcome == "updated":
                    result.codes_updated += 1
                else:
                    result.codes_changed_meanwhile += 1

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
        """Distinct index key versions of every indexed column (whole tables, now)."""
        columns: dict[str, tuple[Column[Any], Any]] = {
            "users.email_index": (users.c.email_index, None),
            "backup_codes.code_index": (
                backup_codes.c.code_index,
                backup_codes.c.used_at.is_(None),
            ),
        }
        out: dict[str, list[int]] = {}
        async with self._engine.connect() as conn:
            for name, (column, condition) in columns.items():
                query = select(self._version_expr(column)).distinct()
                if condition is not None:
                    query = query.where(and_(condition))
                values = (await conn.execute(query)).scalars().all()
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


async def reindex_from_settings(
    settings: Any, *, after: str | None, print_line: Callable[[str], None] = print
) -> ReindexResult:
    """The CLI's job: auth's database and crypto client as the service builds them."""
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
        crypto = CryptoClient(
            channel=channel, identity=ServiceIdentity(name=SERVICE_NAME, signer=signer)
        )
        result = await Reindexer(
            engine=engine,
            crypto=crypto,
            batch_size=settings.reindex_batch_size,
            pause_seconds=settings.reindex_pause_seconds,
        ).run(after=after)
    finally:
        await channel.close(None)
        await engine.dispose()
    for line in result.lines():
        print_line(line)
    return result
