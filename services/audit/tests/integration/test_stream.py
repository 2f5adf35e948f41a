"""StreamEvents: every event once, in storage order, resumable, pushed as it is stored."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import grpc
import pytest

from palisade.audit.server import serve_audit
from palisade_api.audit.v1 import audit_pb2 as pb
from palisade_api.audit.v1 import audit_pb2_grpc

from .audit_support import event


async def _read(stream, count: int) -> list[pb.StreamedEvent]:
    got = []
    while len(got) < count:
        got.append(await asyncio.wait_for(stream.read(), timeout=10))
    return got


def _open(audit, after: str = "", *, include_pii: bool = False, stub=None):
    return (stub or audit.stub).StreamEvents(
        pb.StreamEventsRequest(after=after, include_pii=include_pii),
        metadata=audit.service("apikeys"),  # the harness's stream subscriber
    )


async def test_from_the_beginning_then_live_then_resumed(audit) -> None:
    ws = audit.workspace()
    first = [event(workspace=ws) for _ in range(3)]
    await audit.ingest(*first)
    stream = _open(audit, "0")
    got = await _read(stream, 3)
    assert [g.event.id for g in got] == [e.event_id for e in first]
    live = [event(workspace=ws), event()]
    await audit.ingest(*live)
    more = await _read(stream, 2)
    assert [g.event.id for g in more] == [e.event_id for e in live]
    stream.cancel()
    cursors = [g.cursor for g in got + more]
    assert len(set(cursors)) == 5
    # Resumed after the third: the rest, nothing twice.
    later = [event(workspace=ws)]
    await audit.ingest(*later)
    resumed = _open(audit, got[-1].cursor)
    again = await _read(resumed, 3)
    assert [g.event.id for g in again] == [e.event_id for e in live + later]
    resumed.cancel()


async def test_from_now_on(audit) -> None:
    """Every event stored after the subscription; at most the few stored just before it too
    (on Postgres, while older transactions anywhere in the cluster still run, the last events
    are not final yet and the starting position is the last final one)."""
    ws = audit.workspace()
    before = event(workspace=ws)
    await audit.ingest(before)
    stream = _open(audit)
    await asyncio.wait_for(stream.initial_metadata(), timeout=5)
    new = event(workspace=ws)
    await audit.ingest(new)
    got = []
    while not got or got[-1] != new.event_id:
        got.append((await _read(stream, 1))[0].event.id)
    assert got in ([new.event_id], [before.event_id, new.event_id])
    stream.cancel()


async def test_pii_only_when_asked(audit) -> None:
    ws = audit.workspace()
    await audit.ingest(event(workspace=ws, ip="198.51.100.3"))
    plain = _open(audit, "0")
    [without] = await _read(plain, 1)
    plain.cancel()
    rich = _open(audit, "0", include_pii=True)
    [with_pii] = await _read(rich, 1)
    rich.cancel()
    assert without.event.ip == ""
    assert with_pii.event.ip == "198.51.100.3"
    assert without.event.device.browser == "Firefox 120"


async def test_bad_cursors_and_callers(audit) -> None:
    for bad in ["x", "1", "1.2.3", "-1.0", "99999999999999999999.1"]:
        stream = _open(audit, bad)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream.read()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Recording services write the log but do not read it back; nor do the gateway or people.
    for metadata in (audit.service("auth"), audit.service("gateway"), audit.anonymous()):
        stream = audit.stub.StreamEvents(pb.StreamEventsRequest(after="0"), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stream.read()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_concurrent_ingests_reach_the_stream_once_each(audit_pg) -> None:
    audit = audit_pg
    workspaces = [audit.workspace() for _ in range(4)]
    stream = _open(audit, "0")
    batches = [[event(workspace=w) for w in workspaces for _ in range(3)] for _ in range(10)]
    await asyncio.gather(*(audit.ingest(*b) for b in batches))
    got = await _read(stream, 120)
    stream.cancel()
    ids = [g.event.id for g in got]
    assert len(ids) == len(set(ids)) == 120
    assert set(ids) == {e.event_id for b in batches for e in b}


async def test_events_stored_by_another_replica_arrive(audit_pg) -> None:
    audit = audit_pg
    async with AsyncExitStack() as stack:
        other = await stack.enter_async_context(
            serve_audit(audit.settings, clock=audit.clock, background=False)
        )
        channel = await stack.enter_async_context(audit.signing.channel(other.running.target))
        other_stub = audit_pb2_grpc.AuditServiceStub(channel)
        stream = _open(audit, "0")
        ws = audit.workspace()
        there = event(workspace=ws, type="apikey.created")
        await other_stub.Ingest(pb.IngestRequest(events=[there]), metadata=audit.service("apikeys"))
        [got] = await _read(stream, 1)  # found by polling: no notification crosses processes
        assert got.event.id == there.event_id
        assert got.event.source == "apikeys"
        stream.cancel()


async def test_a_slow_transaction_is_not_overtaken(audit_pg) -> None:
    """A transaction that took its id first but commits last: the stream must not hand out a
    later id and move past it (Postgres hands out ids at insert, shows rows at commit)."""
    audit = audit_pg
    ws = audit.workspace()
    await audit.ingest(event(workspace=ws))
    stream = _open(audit, "0")
    [before] = await _read(stream, 1)
    slow_id = "f" * 32
    async with audit.server.engine.connect() as slow:
        from sqlalchemy import text

        # A row inserted and left uncommitted (as a long ingest would), then a normal ingest.
        await slow.execute(
            text(
                "INSERT INTO events (event_id, workspace_id, seq, prev_hash, hash, type, "
                "occurred_at, recorded_at, source, actor, subject, ip_ct, user_agent_ct, "
                "location_ct, pii_erased, device_browser, device_os, device_kind, outcome, "
                "reason, details) SELECT :e, 'ws_slow', 1, prev_hash, hash, type, occurred_at, "
                "recorded_at, source, actor, subject, ip_ct, user_agent_ct, location_ct, "
                "pii_erased, device_browser, device_os, device_kind, outcome, reason, details "
                "FROM events WHERE event_id = :first"
            ),
            {"e": slow_id, "first": before.event.id},
        )
        fast = event(workspace=ws)
        await audit.ingest(fast)
        await slow.commit()
    got = await _read(stream, 2)
    stream.cancel()
    assert [g.event.id for g in got] == [slow_id, fast.event_id]
