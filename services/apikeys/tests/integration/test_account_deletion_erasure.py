"""RevokeKeysOfUser with reason account_deleted: after it, the database's bytes (pg_dump on
Postgres; the SQLite file with its -wal and -shm on SQLite) hold nothing of the deleted
person's client (IP, User-Agent, the device description made from it), whatever they did
(created, rotated, revealed and revoked keys, revoked someone else's, reported a leak, had
their keys used), and other people's rows are as they were; a repeated call changes nothing;
a usage batch racing the deletion, or arriving after it, brings no IP back. Real gRPC, both
backends."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text
from sqlalchemy.engine import make_url

from palisade.apikeys.tables import metadata
from palisade_api.apikeys.v1 import apikeys_pb2 as pb

ALICE, BOB = f"usr_{uuid.uuid4().hex}", f"usr_{uuid.uuid4().hex}"
WS_ONE, WS_TWO = f"ws_{uuid.uuid4().hex}", f"ws_{uuid.uuid4().hex}"
ALICE_IP, BOB_IP = "127.0.0.77", "127.0.0.88"
ALICE_AGENT = "ErasureAgent/7.7 (alice-unique-agent-4b2e)"
BOB_AGENT = "KeepAgent/1.0 (bob-unique-agent-9a1d)"


def alice(keys, workspace_id: str = WS_ONE):
    return keys.person(ALICE, workspace_id, ip=ALICE_IP, user_agent=ALICE_AGENT)


def bob(keys):
    return keys.person(BOB, WS_ONE, ip=BOB_IP, user_agent=BOB_AGENT)


async def delete_alice(keys) -> int:
    request = pb.RevokeKeysOfUserRequest(user_id=ALICE, reason="account_deleted")
    return (await keys.stub.RevokeKeysOfUser(request, metadata=keys.signing.marker("auth"))).revoked


def _ts(keys, seconds_ago: float = 0) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(keys.clock.now() - timedelta(seconds=seconds_ago))
    return ts


async def use(keys, key_id: str, ip: str, seconds_ago: float = 0) -> None:
    usage = pb.KeyUsage(key_id=key_id, last_used_at=_ts(keys, seconds_ago), ip=ip)
    await keys.stub.RecordKeyUsage(
        pb.RecordKeyUsageRequest(usages=[usage]), metadata=keys.gateway()
    )


async def database_bytes(keys) -> bytes:
    """What a copy of the database would show: pg_dump's output, or the SQLite files."""
    url = make_url(keys.settings.database_url or "")
    if url.get_backend_name() == "postgresql":
        libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
        done = await asyncio.to_thread(
            subprocess.run, ["pg_dump", "--data-only", libpq], capture_output=True, check=True
        )
        return done.stdout
    path = Path(url.database or "")
    files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    return b"".join(f.read_bytes() for f in files if f.exists())


async def rows(keys) -> dict[str, list[tuple[object, ...]]]:
    async with keys.server.engine.connect() as conn:
        return {
            t.name: sorted(
                (tuple(r) for r in await conn.execute(text(f"SELECT * FROM {t.name}"))), key=repr
            )
            for t in metadata.sorted_tables
            # The revocation feed's outbox is the relay's to prune at any moment (its rows
            # hold key ids and hashes, no client): comparing it would race the relay.
            if t.name != "revocation_outbox"
        }


def traces(dump: bytes, *values: str) -> set[str]:
    return {v for v in values if v.encode() in dump}


async def test_deletion_leaves_no_trace_of_the_persons_client(keys) -> None:
    # Alice: keys in two workspaces, a rotation, a reveal, a revocation of her own key and of
    # Bob's, a leak report of Bob's, usages; Bob revokes one of hers.
    a_one = await keys.create(alice(keys))
    a_two = await keys.create(alice(keys, WS_TWO))
    rotated = await keys.stub.RotateApiKey(
        pb.RotateApiKeyRequest(id=a_one.api_key.id, overlap_seconds=600), metadata=alice(keys)
    )
    test_key = await keys.create(alice(keys), mode="test")
    await keys.stub.RevealApiKey(
        pb.RevealApiKeyRequest(id=test_key.api_key.id), metadata=alice(keys)
    )
    own = await keys.create(alice(keys))
    await keys.stub.RevokeApiKey(pb.RevokeApiKeyRequest(id=own.api_key.id), metadata=alice(keys))
    b_kept, b_revoked, b_leaked = [await keys.create(bob(keys)) for _ in range(3)]
    sent_before = await keys.send_notices()  # some notices sent (and stripped), the rest wait
    assert sent_before > 0
    await keys.stub.RevokeApiKey(
        pb.RevokeApiKeyRequest(id=b_revoked.api_key.id), metadata=alice(keys)
    )
    await keys.stub.ReportLeak(
        pb.ReportLeakRequest(key=b_leaked.key, source="https://paste.example.com/x"),
        metadata=alice(keys),
    )
    by_bob = await keys.create(alice(keys))
    await keys.stub.RevokeApiKey(pb.RevokeApiKeyRequest(id=by_bob.api_key.id), metadata=bob(keys))
    await use(keys, a_two.api_key.id, ALICE_IP)
    await use(keys, rotated.api_key.id, ALICE_IP)
    await use(keys, b_kept.api_key.id, BOB_IP)

    before = await database_bytes(keys)
    assert traces(before, ALICE_IP, ALICE_AGENT) == {ALICE_IP, ALICE_AGENT}  # the premise
    kept = await rows(keys)

    # a_one (in its overlap), a_two, its successor and the test key; not the one she revoked
    assert await delete_alice(keys) == 4

    after = await database_bytes(keys)
    assert traces(after, ALICE_IP, ALICE_AGENT) == set(), "the deleted person's client is left"
    assert traces(after, BOB_IP) == {BOB_IP}  # his raw agent went with his sent notices
    now = await rows(keys)
    async with keys.server.engine.connect() as conn:
        theirs = await conn.execute(
            text("SELECT count(*) FROM api_key_events WHERE actor = :a AND device IS NOT NULL"),
            {"a": f"user:{ALICE}"},
        )
        assert theirs.scalar_one() == 0
        fenced = await conn.execute(
            text("SELECT id FROM api_keys WHERE creator_erased_at IS NOT NULL")
        )
        assert {r[0] for r in fenced} == {
            k.api_key.id for k in (a_one, a_two, rotated, test_key, own, by_bob)
        }
    # Bob's rows: his keys, his history entries and his security events, as they were.
    for table in ("api_keys", "api_key_events", "outbox_events"):
        bobs = [r for r in kept[table] if BOB in repr(r) and ALICE not in repr(r)]
        assert bobs
        assert set(bobs) <= set(now[table]), table

    # The notice to Alice still waiting (Bob revoked her key) is dropped; Bob's about Alice's
    # revocation of his key is still sent, without her client; Bob's own keep his.
    keys.auth.notices.clear()
    await keys.send_notices()
    assert {n.user_id for n in keys.auth.notices if n.user_id} == {BOB}
    revoked_notice = next(n for n in keys.auth.notices if n.kind == "api_key_revoked")
    assert (revoked_notice.ip, revoked_notice.user_agent) == ("", "")
    leak = next(n for n in keys.auth.notices if n.kind == "api_key_leak_reported")
    assert (leak.ip, leak.user_agent) == ("", "")
    async with keys.server.engine.connect() as conn:
        payloads = [r[0] for r in await conn.execute(text("SELECT payload FROM notice_outbox"))]
    assert all(json.loads(p)["ip"] == "" for p in payloads)  # none kept after sending

    # Again (auth's retry, its second sweep): nothing is revoked or changed.
    settled = await rows(keys)
    assert await delete_alice(keys) == 0
    assert await rows(keys) == settled


async def test_a_usage_batch_after_the_deletion_stores_no_ip(keys) -> None:
    key = await keys.create(alice(keys))
    other = await keys.create(bob(keys))
    await use(keys, key.api_key.id, ALICE_IP, seconds_ago=5)
    await delete_alice(keys)
    # The gateway's batch of uses made before the revocation reached it, reported late.
    keys.clock.advance(1)
    await use(keys, key.api_key.id, ALICE_IP)
    await use(keys, other.api_key.id, BOB_IP)
    got = await keys.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=bob(keys))
    by_id = {k.id: k for k in got.api_keys}
    assert by_id[key.api_key.id].last_used_ip == ""
    assert (
        by_id[key.api_key.id].last_used_at.ToDatetime()
        > by_id[key.api_key.id].created_at.ToDatetime()
    )
    assert by_id[other.api_key.id].last_used_ip == BOB_IP
    assert traces(await database_bytes(keys), ALICE_IP) == set()


async def test_a_deletion_racing_usage_batches_leaves_no_ip(keys) -> None:
    created = [await keys.create(alice(keys)) for _ in range(3)]
    ids = [c.api_key.id for c in created]

    async def batches() -> None:
        for _ in range(15):
            keys.clock.advance(1)
            usages = [
                pb.KeyUsage(key_id=key_id, last_used_at=_ts(keys), ip=ALICE_IP)
                for key_id in reversed(ids)  # the service sorts them: one lock order
            ]
            await keys.stub.RecordKeyUsage(
                pb.RecordKeyUsageRequest(usages=usages), metadata=keys.gateway()
            )

    # Batches go on before, during and after the deletion (each round a newer use).
    _, revoked = await asyncio.gather(batches(), delete_alice(keys))
    assert revoked == 3
    async with keys.server.engine.connect() as conn:
        left = await conn.execute(
            text("SELECT count(*) FROM api_keys WHERE last_used_ip IS NOT NULL")
        )
        assert left.scalar_one() == 0
    assert traces(await database_bytes(keys), ALICE_IP) == set()
