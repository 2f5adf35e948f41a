"""What a deleted account leaves in apikeys: the statements that erase the person's client.

Auth deletes an account and then calls RevokeKeysOfUser with reason account_deleted (from its
durable outbox, retried until answered, and once more a minute later). After revoking, the
call runs erase_person() in one transaction with a last look for live keys (revoking.py), so
that from its commit on nothing in apikeys' tables holds the person's IP, User-Agent or the
device description made from it:

- api_keys of the person: last_used_ip is emptied and creator_erased_at set. last_used_ip is
  the address of whatever called the key, usually the person's own integration (a server, or
  their laptop running curl): with the account gone and the key revoked for good, nobody has a
  use for it that outweighs that, and it cannot be told apart from the person's own address.
  creator_erased_at fences RecordKeyUsage (store.py): a gateway's usage batch that arrives
  after this commit (they are batched, so one usually does) stores the time but no IP.
- api_key_events the person acted in (actor user:<id>), in any workspace and on anyone's key:
  their sealed client (history_seal.py: under the person's subject key, which the deletion
  shreds, so copies in backups are unreadable too) is emptied as well, and so are ip and device
  of entries written before sealing existed. Entries others made on the person's keys keep
  their own actor's client (not the person's). The security log keeps its copies sealed under
  the person's subject key: those become unreadable there at the same time.
- notice_outbox: notices addressed to the person still waiting are dropped (failed_at, reason
  account_deleted: auth has nobody to send them to); a waiting notice to someone else that
  names them as the actor (whose client that email would show) loses the client and is still
  sent. Notices already sent or given up lost theirs when they were marked (notices.py). One
  the relay is sending at this very moment reaches auth with the client (auth's deletion
  handles its own copies); the relay's mark then writes its stripped copy, or nothing once
  the notice was dropped.
- outbox_events the person acted in that audit has not taken yet (pending, or set aside by
  audit): IP and device removed, as the forwarder removes them once audit has an event.
  Forwarded rows kept none. revocation_outbox rows hold key hashes, ids and reasons only.

What is sealed and what is erased. The history is the one place that keeps a person's client
for long, so it is sealed (crypto-shredding reaches its copies in backups). The rest is erased
in place: the notice and security-event outboxes hold a client only until it is handed on
(auth's mail queue is encrypted and dropped for a deleted account; audit seals what it gets
under the subject key), and last_used_ip is one value per key, overwritten by every use and
written by the gateway's batched usage reports, whose hot path gets no crypto call. So a backup
of apikeys' database taken before the deletion still holds, for its retention, the last caller
address of the person's keys and the client of notices and events that were waiting at that
moment (docs/operations.md, Backups: bounded retention); no history entry of theirs.

On SQLite (the embedded default) a changed row's old bytes would stay in the file: in the
page's free space and in the -wal file's older page images. The service's connections run with
secure_delete (freed space is zeroed; zero_freed_space()), and after the erasure commits the
WAL is checkpointed into the database file and truncated (truncate_wal()). On Postgres the old
row versions stay in the table's pages until vacuum reuses them, and in WAL archives and
backups for their retention (as for every erasure there; docs/operations.md).

Idempotent: a repeated call finds nothing left to change and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, event, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.apikeys.notices import Notice
from palisade.apikeys.store import KeysTransaction
from palisade.apikeys.tables import NOTICE_PENDING, api_key_events, api_keys, notice_outbox, outbox
from palisade.common.audit_ingest import without_pii

ACCOUNT_DELETED = "account_deleted"
# Why a waiting notice to a deleted person was given up (notice_outbox.last_error).
DROPPED_NOTICE_REASON = ACCOUNT_DELETED


@dataclass(frozen=True)
class Erased:
    keys: int  # keys of the person this call fenced or emptied
    events: int  # history entries that lost a client
    notices_dropped: int
    notices_stripped: int
    security_events: int  # outbox rows not yet forwarded that lost a client


def zero_freed_space(engine: AsyncEngine) -> None:
    """SQLite: every connection zeroes what its writes free (PRAGMA secure_delete), so an
    erased value is gone from the file rather than left in a page's free space."""
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _secure_delete)


def _secure_delete(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


async def truncate_wal(engine: AsyncEngine) -> None:
    """SQLite: copies the WAL into the database file and truncates it, so no page image from
    before an erasure lingers in the -wal file. Outside any transaction (the engine's BEGIN
    IMMEDIATE would hold the write lock the checkpoint needs); readers still holding an older
    snapshot make it stop short, which the next erasure's checkpoint completes. Postgres:
    nothing to do."""
    if engine.dialect.name != "sqlite":
        return
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        cursor = await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await cursor.close()


async def lock_keys_of_creator(tx: KeysTransaction, user_id: str) -> None:
    """Locks every key the person created, dead or alive, in id order (Postgres), the order
    RecordKeyUsage's batches and every multi-key writer lock in, so the erasure's UPDATE can
    never deadlock with one of them. SQLite's BEGIN IMMEDIATE already serialises."""
    if tx.conn.dialect.name != "postgresql":
        return
    await tx.conn.execute(
        select(api_keys.c.id)
        .where(api_keys.c.created_by == user_id)
        .order_by(api_keys.c.id)
        .with_for_update()
    )


async def erase_person(tx: KeysTransaction, user_id: str, now: datetime) -> Erased:
    """Erases the person's client from every apikeys table (the module doc), inside the
    caller's transaction, which holds lock_keys_of_creator's locks."""
    principal = f"user:{user_id}"
    keys = await tx.conn.execute(
        update(api_keys)
        .where(
            api_keys.c.created_by == user_id,
            or_(api_keys.c.creator_erased_at.is_(None), api_keys.c.last_used_ip.is_not(None)),
        )
        .values(
            last_used_ip=None,
            creator_erased_at=func.coalesce(api_keys.c.creator_erased_at, now),
        )
    )
    events = await tx.conn.execute(
        update(api_key_events)
        .where(
            api_key_events.c.actor == principal,
            or_(
                api_key_events.c.ip.is_not(None),
                api_key_events.c.device.is_not(None),
                api_key_events.c.client_ct.is_not(None),
            ),
        )
        .values(ip=None, device=None, client_ct=None)
    )
    dropped, stripped = await _erase_notices(tx, user_id, principal, now)
    return Erased(
        keys=int(keys.rowcount),
        events=int(events.rowcount),
        notices_dropped=dropped,
        notices_stripped=stripped,
        security_events=await _strip_pending_events(tx, principal),
    )


async def _erase_notices(
    tx: KeysTransaction, user_id: str, principal: str, now: datetime
) -> tuple[int, int]:
    # Only waiting notices still hold a client (a sent or given-up one lost it when it was
    # marked, or in migration 0005), and only those need dropping: the partial index of
    # waiting notices bounds the scan. The id is unique and fixed-length, so a text match
    # finds every one naming the person (a superset: each is decided on its parsed fields).
    rows = (
        await tx.conn.execute(
            select(notice_outbox.c.id, notice_outbox.c.payload).where(
                NOTICE_PENDING, notice_outbox.c.payload.contains(user_id, autoescape=True)
            )
        )
    ).all()
    drop, strip = [], []
    for notice_id, payload in rows:
        notice = Notice.from_json(payload)
        clean = {"b_id": notice_id, "b_payload": notice.without_client().to_json()}
        if notice.user_id == user_id:
            drop.append(clean)
        elif notice.actor == principal and (notice.ip or notice.user_agent):
            strip.append(clean)
    waiting = and_(notice_outbox.c.id == bindparam("b_id"), NOTICE_PENDING)
    if drop:
        await tx.conn.execute(
            update(notice_outbox)
            .where(waiting)
            .values(
                payload=bindparam("b_payload"), failed_at=now, last_error=DROPPED_NOTICE_REASON
            ),
            drop,
        )
    if strip:
        await tx.conn.execute(
            update(notice_outbox).where(waiting).values(payload=bindparam("b_payload")), strip
        )
    return len(drop), len(strip)


async def _strip_pending_events(tx: KeysTransaction, principal: str) -> int:
    """IP and device out of the events audit has not had (pending or set aside) that the
    person acted in; a forwarded row kept neither."""
    rows = (
        await tx.conn.execute(
            select(outbox.c.id, outbox.c.payload).where(
                outbox.c.forwarded_at.is_(None),
                outbox.c.payload.contains(f'"{principal}"', autoescape=True),
            )
        )
    ).all()
    changed = [
        {"b_id": row_id, "b_payload": clean}
        for row_id, payload in rows
        if (clean := without_pii(payload)) != payload
    ]
    if changed:
        await tx.conn.execute(
            update(outbox)
            .where(outbox.c.id == bindparam("b_id"), outbox.c.forwarded_at.is_(None))
            .values(payload=bindparam("b_payload")),
            changed,
        )
    return len(changed)
