"""Expiries reach the security log: a key whose `expiresAt` (or rotation overlap) has passed
gets one stored `expired` history entry and one `apikey.expired` security event, however many
recorders run at once (SQLite and Postgres; on Postgres two recorders that have both read the
same due keys), and none if it was revoked first, even by a revocation that commits between the
recorder's read and its claim (Postgres). Keys are claimed in id order; a key that cannot be
recorded holds back no other; the due keys and a creator's keys are read through indexes
(migration 0003). ManualClock."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import event, text

from palisade.apikeys.expiry import ExpiryRecorder
from palisade.apikeys.store import ApiKeyStore, KeysTransaction
from palisade_api.apikeys.v1 import apikeys_pb2 as pb


def _in(keys, seconds: int) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(keys.clock.now() + timedelta(seconds=seconds))
    return ts


async def _history(keys, key_id: str) -> list[tuple[str, str, int]]:
    events = await keys.stub.ListApiKeyEvents(
        pb.ListApiKeyEventsRequest(id=key_id), metadata=keys.person()
    )
    return [(e.type, e.actor, e.occurred_at.seconds) for e in events.events]


async def test_an_expiry_is_recorded_once_with_its_own_time(keys) -> None:
    created = await keys.create(expires_at=_in(keys, 3600))
    key_id = created.api_key.id
    await keys.server.expiry.record_due()
    assert await keys.security_events("apikey.expired") == []  # not due yet

    keys.clock.advance(3600 + 120)  # recorded late: the event still carries the expiry time
    before = await _history(keys, key_id)  # synthesized from expiresAt until recorded
    await asyncio.gather(*(keys.server.expiry.record_due() for _ in range(10)))
    await keys.server.expiry.record_due()

    events = [json.loads(p) for p in await keys.security_events("apikey.expired")]
    assert len(events) == 1
    assert events[0]["subject"] == f"apikey:{key_id}"
    assert events[0]["actor"] == "system"
    assert events[0]["reason"] == "expired"
    after = await _history(keys, key_id)
    assert after == before
    assert [(kind, actor) for kind, actor, _ in after] == [
        ("expired", "system"),
        ("created", "user:usr_alice"),
    ]
    assert after[0][2] == created.api_key.expires_at.seconds
    assert (await keys.counts())["api_key_events"] == 2  # created + expired, stored


async def test_the_end_of_a_rotation_overlap_is_recorded_as_overlap_ended(keys) -> None:
    old = await keys.create()
    await keys.stub.RotateApiKey(
        pb.RotateApiKeyRequest(id=old.api_key.id, overlap_seconds=600), metadata=keys.person()
    )
    keys.clock.advance(600)
    await keys.server.expiry.record_due()
    events = [json.loads(p) for p in await keys.security_events("apikey.expired")]
    assert [(e["subject"], e["reason"]) for e in events] == [
        (f"apikey:{old.api_key.id}", "overlap_ended")
    ]
    assert [kind for kind, _, _ in await _history(keys, old.api_key.id)] == [
        "expired",
        "rotated",
        "created",
    ]


async def test_a_key_revoked_before_its_expiry_never_expires(keys) -> None:
    created = await keys.create(expires_at=_in(keys, 60))
    await keys.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=created.api_key.id), metadata=keys.person()
    )
    keys.clock.advance(120)
    await keys.server.expiry.record_due()
    await keys.server.expiry.record_due()
    assert await keys.security_events("apikey.expired") == []
    assert [kind for kind, _, _ in await _history(keys, created.api_key.id)] == [
        "revoked",
        "created",
    ]


async def test_many_due_keys_are_recorded_across_batches(keys) -> None:
    for _ in range(5):
        await keys.create(expires_at=_in(keys, 60))
    keys.clock.advance(61)
    store = ApiKeyStore(engine=keys.server.engine)
    small = ExpiryRecorder(store=store, clock=keys.clock, interval_seconds=1, batch_size=2)
    assert await small.record_due() == 5
    assert await small.record_due() == 0
    assert len(await keys.security_events("apikey.expired")) == 5


# --- races and failures ----------------------------------------------------------------------


@pytest.fixture
async def keys_postgres(apikeys_factory, postgres_url: str) -> AsyncIterator[Any]:
    """The service on Postgres only: for interleavings SQLite's one writer cannot produce."""
    async with apikeys_factory(postgres_url) as harness:
        yield harness


def after_due_expiries(
    monkeypatch: pytest.MonkeyPatch, hook: Callable[[], Awaitable[None]]
) -> None:
    """Runs `hook` each time a recorder has read its due keys, before it claims any."""
    read = KeysTransaction.due_expiries

    async def then_hook(self: KeysTransaction, *args: Any, **kwargs: Any) -> Any:
        due = await read(self, *args, **kwargs)
        await hook()
        return due

    monkeypatch.setattr(KeysTransaction, "due_expiries", then_hook)


def recorder(keys, batch_size: int = 200) -> ExpiryRecorder:
    store = ApiKeyStore(engine=keys.server.engine)
    return ExpiryRecorder(store=store, clock=keys.clock, interval_seconds=1, batch_size=batch_size)


@pytest.mark.postgres
async def test_a_revocation_committed_between_the_read_and_the_claim_is_seen(
    keys_postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key is revoked at T+30, before its expiry at T+60, but the revoking transaction
    # commits only after the recorder (at T+120) has read the due keys: a slow revocation, or
    # one from a replica whose clock is behind. The claim must see it: nothing expired.
    keys = keys_postgres
    start = keys.clock.now()
    created = await keys.create(expires_at=_in(keys, 60))
    key_id = created.api_key.id
    revoked: list[str] = []

    async def revoke_now() -> None:
        if revoked:
            return
        later = keys.clock.now()
        keys.clock.set(start + timedelta(seconds=30))
        await keys.stub.RevokeApiKey(pb.RevokeApiKeyRequest(id=key_id), metadata=keys.person())
        keys.clock.set(later)
        revoked.append(key_id)

    after_due_expiries(monkeypatch, revoke_now)
    keys.clock.advance(120)
    assert await keys.server.expiry.record_due() == 0
    assert revoked == [key_id]
    assert await keys.security_events("apikey.expired") == []
    assert [kind for kind, _, _ in await _history(keys, key_id)] == ["revoked", "created"]
    assert (await keys.counts())["api_key_events"] == 2  # created + revoked: no stored expired


@pytest.mark.postgres
async def test_two_recorders_that_read_the_same_due_keys_record_each_once(
    keys_postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both recorders read the same first batch before either claims anything (a barrier after
    # the read), so every claim of that batch is contended: the loser of each waits for the
    # winner's row lock, then finds the key claimed. Later batches race freely.
    keys = keys_postgres
    for _ in range(12):
        await keys.create(expires_at=_in(keys, 60))
    keys.clock.advance(61)
    barrier = asyncio.Barrier(2)
    reads = {"count": 0}

    async def meet() -> None:
        reads["count"] += 1
        if reads["count"] <= 2:
            async with asyncio.timeout(10):
                await barrier.wait()

    after_due_expiries(monkeypatch, meet)
    first, second = recorder(keys, batch_size=5), recorder(keys, batch_size=5)
    written = await asyncio.gather(first.record_due(), second.record_due())
    assert sum(written) == 12
    subjects = [json.loads(p)["subject"] for p in await keys.security_events("apikey.expired")]
    assert len(subjects) == len(set(subjects)) == 12
    assert (await keys.counts())["api_key_events"] == 24  # created + expired, each key once


async def test_keys_are_claimed_in_id_order(keys) -> None:
    # record_usage and RevokeKeysOfUser lock keys in id order; claiming in any other order
    # (creation order, say) lets two transactions wait on each other in a cycle on Postgres.
    created: list[str] = []
    while len(created) < 3 or created == sorted(created):
        created.append((await keys.create(expires_at=_in(keys, 600))).api_key.id)
        keys.clock.advance(1)
    keys.clock.advance(600)
    claimed: list[str] = []

    def watch(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_KEYS") and (
            "expiry_recorded_at" in statement
        ):
            values = params.values() if isinstance(params, dict) else params
            claimed.extend(v for v in values if isinstance(v, str) and v in created)

    engine = keys.server.engine.sync_engine
    event.listen(engine, "before_cursor_execute", watch)
    try:
        assert await keys.server.expiry.record_due() == len(created)
    finally:
        event.remove(engine, "before_cursor_execute", watch)
    assert claimed == sorted(created)


async def test_a_key_that_cannot_be_recorded_holds_back_no_other(
    keys, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [(await keys.create(expires_at=_in(keys, 60))).api_key.id for _ in range(5)]
    broken = sorted(ids)[1]
    async with keys.server.engine.begin() as conn:  # a row the service cannot read
        await conn.execute(
            text("UPDATE api_keys SET scopes = 'not json' WHERE id = :id"), {"id": broken}
        )
    keys.clock.advance(61)
    small = recorder(keys, batch_size=2)
    with caplog.at_level(logging.ERROR, logger="palisade.apikeys.expiry"):
        assert await small.record_due() == 4
        assert await small.record_due() == 0  # still due, still failing, still alone
    assert [r.getMessage() for r in caplog.records].count(
        f"expiry of key {broken} could not be recorded; left due"
    ) == 2
    subjects = {json.loads(p)["subject"] for p in await keys.security_events("apikey.expired")}
    assert subjects == {f"apikey:{i}" for i in ids if i != broken}
    async with keys.server.engine.begin() as conn:  # repaired: recorded on the next pass
        await conn.execute(
            text("""UPDATE api_keys SET scopes = '["chats:read"]' WHERE id = :id"""),
            {"id": broken},
        )
    assert await small.record_due() == 1
    assert len(await keys.security_events("apikey.expired")) == 5


# --- indexes (migration 0003) ----------------------------------------------------------------

DUE_INDEXES = {
    "ix_api_keys_expiry_due": "expires_at",
    "ix_api_keys_overlap_end_due": "overlap_ends_at",
}


async def _index_sql(keys) -> dict[str, str]:
    async with keys.server.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            rows = await conn.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'api_keys'")
            )
        else:
            rows = await conn.execute(
                text("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
            )
        return {str(name): str(sql) for name, sql in rows if sql is not None}


async def test_the_migrations_index_the_due_keys_and_each_creators_keys(keys) -> None:
    indexes = await _index_sql(keys)
    for name, column in DUE_INDEXES.items():
        definition = indexes[name].lower()
        assert column in definition
        assert "where" in definition
        assert "expiry_recorded_at is null" in definition
        assert f"{column} is not null" in definition
    assert "created_by" in indexes["ix_api_keys_created_by"]
    assert "where" not in indexes["ix_api_keys_created_by"].lower()


async def _plan_of(keys, run: Callable[[KeysTransaction], Awaitable[object]]) -> str:
    """Postgres's plan for the statement `run` sends (its first), with sequential scans
    priced out so the plan shows which indexes can serve it at all."""
    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *rest: Any) -> None:
        if not captured:
            captured.append((statement, params))

    engine = keys.server.engine.sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        async with ApiKeyStore(engine=keys.server.engine).transaction() as tx:
            await run(tx)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, params = captured[0]
    async with keys.server.engine.connect() as conn:
        await conn.exec_driver_sql("SET enable_seqscan = off")
        rows = await conn.exec_driver_sql("EXPLAIN " + statement, params)
        return "\n".join(str(r[0]) for r in rows)


@pytest.mark.postgres
async def test_postgres_reads_the_due_keys_and_a_creators_keys_through_the_indexes(
    keys_postgres,
) -> None:
    keys = keys_postgres
    now = keys.clock.now()
    async with keys.server.engine.begin() as conn:  # many keys, few of them due
        await conn.execute(
            text(
                "INSERT INTO api_keys (id, workspace_id, name, type, mode, lookup_hash, "
                "secret_ct, prefix, last4, scopes, allowed_origins, created_by, created_at, "
                "expires_at, overlap_ends_at) VALUES (:id, 'wsp_a', 'k', 'secret', 'live', "
                ":hash, :ct, 'sk_live_xxxx', 'abcd', '[]', '[]', :by, :at, :exp, :ovl)"
            ),
            [
                {
                    "id": f"key_{i:032x}",
                    "hash": secrets.token_bytes(32),
                    "ct": b"x",
                    "by": f"usr_{i % 500:032x}",
                    "at": now,
                    "exp": now + timedelta(days=1) if i % 100 == 0 else None,
                    "ovl": now + timedelta(days=1) if i % 100 == 1 else None,
                }
                for i in range(5000)
            ],
        )
        await conn.execute(text("ANALYZE api_keys"))
    due_plan = await _plan_of(keys, lambda tx: tx.due_expiries(now, limit=200))
    for name in DUE_INDEXES:
        assert name in due_plan, due_plan
    creator_plan = await _plan_of(
        keys, lambda tx: tx.live_keys_of_creator(f"usr_{7:032x}", None, now=now, limit=200)
    )
    assert "ix_api_keys_created_by" in creator_plan, creator_plan
