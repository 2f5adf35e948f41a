"""Review of batched decrypts (auth) over crypto's direct subject-key reads (Postgres).

Checked here, on a real crypto service and database: the direct reads of subject_keys give what
the engine path gives (bytes, UTC datetimes, tombstones; duplicates and empty lists); a shred is
seen by the very next read, on a warm (prepared, pooled) connection and through auth's batched
client; a database refusing connections is a 503 (Unavailable), not a 500, and the next read
after it is back succeeds; concurrent batched callers of distinct subjects, one of them erased,
each get their own answer.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from palisade.common.aad import associated_data
from palisade.common.crypto_client import CryptoClient, SubjectErased
from palisade.common.db import create_engine, database_unavailable
from palisade.common.direct_reads import DirectReads, _Connections
from palisade.common.errors import Unavailable
from palisade.crypto.subject_store import DatabaseSubjectStore, metadata
from palisade.crypto.subjects import SubjectRecord

pytestmark = [pytest.mark.postgres]


def _subject(i: int) -> str:
    return f"user:usr_{i:032x}"


def _aad(i: int, field: str = "email") -> bytes:
    return associated_data("auth", "ws_review", f"usr_{i:032x}", field)


def _conninfo(url: str, **options: str) -> str:
    base = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    if not options:
        return base
    flags = " ".join(f"-c {k}={v}" for k, v in options.items())
    return psycopg.conninfo.make_conninfo(base, options=flags)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture
async def stores(postgres_url: str):
    """The subject store on the engine path and on direct reads (a connection whose time
    zone is not UTC, so the conversion is exercised), on one fresh database."""
    engine = create_engine(postgres_url, pool_size=2)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    reads = DirectReads(
        engine, _Connections(_conninfo(postgres_url, TimeZone="Asia/Kolkata"), max_size=2)
    )
    try:
        yield DatabaseSubjectStore(engine=engine), DatabaseSubjectStore(engine=engine, reads=reads)
    finally:
        await reads.close()
        await engine.dispose()


def _record(i: int, now: datetime) -> SubjectRecord:
    return SubjectRecord(
        subject=_subject(i),
        key_id=secrets.token_bytes(16),
        wrapped_secret=secrets.token_bytes(60),
        wrap_version=1,
        created_at=now - timedelta(minutes=i),
        shredded_at=None,
    )


async def test_direct_subject_reads_give_what_the_engine_gives(stores) -> None:
    engine_store, direct = stores
    assert direct._reads is not None
    now = datetime.now(UTC).replace(microsecond=123456)
    records = [_record(i, now) for i in range(5)]
    await engine_store.insert_new(records)
    shred = await engine_store.shred(_subject(1), secrets.token_bytes(16), now)
    tombstone_key = secrets.token_bytes(16)
    await engine_store.shred(_subject(9), tombstone_key, now)  # never encrypted: a tombstone
    names = [_subject(i) for i in (0, 1, 1, 2, 9, 7, 0)]  # duplicates, an unknown one
    key_ids = [r.key_id for r in records] + [tombstone_key, records[0].key_id, b"\0" * 16]
    for a, b, expected in [
        (await engine_store.by_subjects(names), await direct.by_subjects(names), 4),
        (await engine_store.by_key_ids(key_ids), await direct.by_key_ids(key_ids), 6),
    ]:
        assert a == b
        assert len(b) == expected
        for key, record in b.items():
            assert type(key) in (str, bytes)
            assert type(record.key_id) is bytes
            assert record.wrapped_secret is None or type(record.wrapped_secret) is bytes
            assert record.created_at.tzinfo is UTC
            assert record.shredded_at is None or record.shredded_at.tzinfo is UTC
    by_name = await direct.by_subjects(names)
    assert set(by_name) == {_subject(i) for i in (0, 1, 2, 9)}
    assert by_name[_subject(0)].created_at == now
    assert by_name[_subject(0)].wrapped_secret == records[0].wrapped_secret
    assert by_name[_subject(1)].key_id == shred.key_id == records[1].key_id
    assert by_name[_subject(1)].wrapped_secret is None
    assert by_name[_subject(1)].wrap_version is None
    assert by_name[_subject(1)].shredded_at == now
    assert by_name[_subject(9)].key_id == tombstone_key
    assert by_name[_subject(9)].erased
    by_key = await direct.by_key_ids(key_ids)
    assert set(by_key) == {r.key_id for r in records} | {tombstone_key}
    assert all(by_key[r.key_id].subject == r.subject for r in records)


async def test_empty_lists_read_nothing_and_touch_no_database(postgres_url: str) -> None:
    engine = create_engine(postgres_url, pool_size=1)
    dead = f"postgresql://postgres@127.0.0.1:{_dead_port()}/nothing?connect_timeout=2"
    reads = DirectReads(engine, _Connections(dead, max_size=1))
    try:
        store = DatabaseSubjectStore(engine=engine, reads=reads)
        assert await store.by_subjects([]) == {}
        assert await store.by_key_ids([]) == {}
        with pytest.raises(psycopg.OperationalError) as refused:
            await store.by_key_ids([b"\1" * 16])  # this one does go to the (dead) database
        assert database_unavailable(refused.value)  # the interceptor's 503, not a 500
    finally:
        await reads.close()
        await engine.dispose()


async def test_a_shred_is_seen_by_the_next_direct_read_on_a_warm_connection(stores) -> None:
    engine_store, direct = stores
    now = datetime.now(UTC)
    records = [_record(i, now) for i in range(3)]
    await engine_store.insert_new(records)
    key_ids = [r.key_id for r in records]
    for _ in range(8):  # past psycopg's prepare threshold, on the pooled connection
        assert not any(r.erased for r in (await direct.by_key_ids(key_ids)).values())
        assert not (await direct.by_subjects([_subject(1)]))[_subject(1)].erased
    await engine_store.shred(_subject(1), secrets.token_bytes(16), now)
    after = await direct.by_key_ids(key_ids)
    assert after[records[1].key_id].erased
    assert after[records[1].key_id].wrapped_secret is None
    assert not after[records[0].key_id].erased
    assert (await direct.by_subjects([_subject(1)]))[_subject(1)].erased


def _crypto_database(auth) -> str:
    url = make_url(auth.crypto_server.engine.url)
    return str(url.database)


def _admin(auth) -> psycopg.Connection:
    url = make_url(auth.crypto_server.engine.url).set(drivername="postgresql", database="postgres")
    return psycopg.connect(url.render_as_string(hide_password=False), autocommit=True)


def _client(auth) -> CryptoClient:
    crypto = auth.servers[0].sessions._crypto
    assert isinstance(crypto, CryptoClient)
    assert crypto.decrypt_batches is not None  # auth's own client, batching
    return crypto


async def test_concurrent_batched_callers_of_distinct_subjects_get_only_their_own(auth) -> None:
    crypto = _client(auth)
    people = range(40)
    sealed = {}
    for i in people:
        fields = [f"pii-{i}@example.com".encode(), f"Person {i}".encode()]
        envelopes = await crypto.encrypt(
            [(fields[0], _aad(i)), (fields[1], _aad(i, "name"))], subject=_subject(i)
        )
        sealed[i] = (fields, [(envelopes[0], _aad(i)), (envelopes[1], _aad(i, "name"))])
    assert await crypto.shred_subject(_subject(13))
    sent_before = crypto.decrypt_batches.batches_sent
    for _ in range(3):
        # Each person twice (the same envelopes, the same key ids in one batch).
        order = [*people, *people]
        results = await asyncio.gather(
            *(crypto.decrypt(sealed[i][1]) for i in order), return_exceptions=True
        )
        for i, result in zip(order, results, strict=True):
            if i == 13:
                assert isinstance(result, SubjectErased)
                assert str(result).startswith("item 0:")
            else:
                assert result == sealed[i][0]
    assert crypto.decrypt_batches.batches_sent > sent_before


async def test_one_erased_caller_does_not_make_a_batch_cost_more_than_no_batching(auth) -> None:
    crypto = _client(auth)
    sealed = {}
    for i in range(20):
        [envelope] = await crypto.encrypt([(b"pii %d" % i, _aad(i))], subject=_subject(i))
        sealed[i] = [(envelope, _aad(i))]
    assert await crypto.shred_subject(_subject(7))
    sent_before = crypto.decrypt_batches.batches_sent
    results = await asyncio.gather(
        *(crypto.decrypt(sealed[i]) for i in range(20)), return_exceptions=True
    )
    assert isinstance(results[7], SubjectErased)
    assert [r for i, r in enumerate(results) if i != 7] == [
        [b"pii %d" % i] for i in range(20) if i != 7
    ]
    assert crypto.decrypt_batches.batches_sent - sent_before <= 20


async def test_a_shred_takes_effect_for_the_next_batched_decrypt(auth) -> None:
    crypto = _client(auth)
    envelopes = {}
    for i in range(6):
        [envelope] = await crypto.encrypt([(b"secret %d" % i, _aad(i))], subject=_subject(i))
        envelopes[i] = [(envelope, _aad(i))]
    for _ in range(3):  # warm: connections pooled and statements prepared
        assert await asyncio.gather(*(crypto.decrypt(envelopes[i]) for i in range(6))) == [
            [b"secret %d" % i] for i in range(6)
        ]
    assert await crypto.shred_subject(_subject(4))
    results = await asyncio.gather(
        *(crypto.decrypt(envelopes[i]) for i in range(6)), return_exceptions=True
    )
    assert isinstance(results[4], SubjectErased)
    assert [r for i, r in enumerate(results) if i != 4] == [
        [b"secret %d" % i] for i in range(6) if i != 4
    ]


async def test_a_database_refusing_connections_is_a_503_and_the_next_read_recovers(auth) -> None:
    crypto = _client(auth)
    [envelope] = await crypto.encrypt([(b"kept", _aad(1))], subject=_subject(1))
    items = [(envelope, _aad(1))]
    assert await crypto.decrypt(items) == [b"kept"]  # a pooled direct-read connection now
    name = _crypto_database(auth)
    with _admin(auth) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
        )
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            results = await asyncio.gather(
                *(crypto.decrypt(items) for _ in range(5)), return_exceptions=True
            )
            assert all(isinstance(r, Unavailable) for r in results), results
        finally:
            admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name))
            )
    assert await crypto.decrypt(items) == [b"kept"]


async def test_dropped_direct_read_connections_cost_no_request(auth) -> None:
    """A restart of Postgres drops crypto's pooled direct-read connections: the next batched
    decrypts still succeed (one more attempt on a fresh connection), none is a 503."""
    crypto = _client(auth)
    [envelope] = await crypto.encrypt([(b"kept", _aad(2))], subject=_subject(2))
    items = [(envelope, _aad(2))]
    assert await asyncio.gather(*(crypto.decrypt(items) for _ in range(4))) == [[b"kept"]] * 4
    with _admin(auth) as admin:
        terminated = admin.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()) AS t",
            (_crypto_database(auth),),
        ).fetchone()
    assert terminated is not None
    assert terminated[0] >= 1
    assert await asyncio.gather(*(crypto.decrypt(items) for _ in range(4))) == [[b"kept"]] * 4


async def test_a_crypto_outage_is_every_batched_callers_503_and_nobody_hangs(auth) -> None:
    crypto = _client(auth)
    [envelope] = await crypto.encrypt([(b"kept", _aad(3))], subject=_subject(3))
    items = [(envelope, _aad(3))]
    assert await crypto.decrypt(items) == [b"kept"]
    await auth.crypto_stop()
    results = await asyncio.gather(
        *(crypto.decrypt(items) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(r, Unavailable) for r in results), results
    assert len({id(r) for r in results}) == 10
    await asyncio.sleep(0)  # the batches' done callbacks run on the next turn
    assert not crypto.decrypt_batches._in_flight
    assert crypto.decrypt_batches._waiting == []
