"""Ingest over real gRPC, on SQLite and Postgres: idempotent, all or nothing, in order."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import grpc
import pytest

from palisade_api.audit.v1 import audit_pb2 as pb

from .audit_support import FIREFOX, event, trailer, user_id

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_a_batch_is_stored_in_order_and_chained(audit) -> None:
    ws = audit.workspace()
    batch = [event(workspace=ws, actor=f"user:{user_id()}") for _ in range(5)]
    answer = await audit.ingest(*batch)
    assert (answer.stored, answer.duplicates) == (5, 0)
    assert await audit.chain(ws) == [(i + 1, e.event_id) for i, e in enumerate(batch)]


async def test_the_same_batch_twice_is_stored_once(audit) -> None:
    ws = audit.workspace()
    batch = [event(workspace=ws) for _ in range(4)]
    await audit.ingest(*batch)
    again = await audit.ingest(*batch)
    assert (again.stored, again.duplicates) == (0, 4)
    assert await audit.count() == 4


async def test_a_duplicate_with_other_content_is_still_a_duplicate(audit, caplog) -> None:
    ws = audit.workspace()
    first = event(workspace=ws, reason="wrong_password", outcome="failure")
    await audit.ingest(first)
    changed = pb.IngestEvent()
    changed.CopyFrom(first)
    changed.reason = "something_else"
    answer = await audit.ingest(changed, event(workspace=ws))
    assert (answer.stored, answer.duplicates) == (1, 1)
    assert await audit.count() == 2
    assert any("different content" in r.getMessage() for r in caplog.records)
    # Twice in one batch: the first stands, the second is a duplicate.
    twice = event(workspace=ws)
    answer = await audit.ingest(twice, twice)
    assert (answer.stored, answer.duplicates) == (1, 1)


async def test_parallel_overlapping_batches_store_each_event_once(audit) -> None:
    ws = audit.workspace()
    events = [event(workspace=ws) for _ in range(30)]
    batches = [events[i : i + 12] for i in range(0, 30, 6)]  # each event in two batches
    answers = await asyncio.gather(*(audit.ingest(*b) for b in batches * 2))
    assert sum(a.stored for a in answers) == 30
    assert sum(a.stored + a.duplicates for a in answers) == sum(len(b) for b in batches * 2)
    chain = await audit.chain(ws)
    assert [seq for seq, _ in chain] == list(range(1, 31))
    assert {e for _, e in chain} == {e.event_id for e in events}


async def test_concurrent_batches_keep_each_workspace_in_batch_order(audit) -> None:
    a, b = audit.workspace(), audit.workspace()
    batches = []
    for _ in range(8):
        mixed = []
        for _ in range(5):
            mixed += [event(workspace=a), event(workspace=b)]
        batches.append(mixed)
    await asyncio.gather(*(audit.ingest(*batch) for batch in batches))
    for ws in (a, b):
        chain = await audit.chain(ws)
        assert [seq for seq, _ in chain] == list(range(1, 41))
        order = [e for _, e in chain]
        for batch in batches:
            mine = [e.event_id for e in batch if e.workspace_id == ws]
            positions = [order.index(e) for e in mine]
            # A batch's events of one workspace are contiguous and in batch order.
            assert positions == list(range(positions[0], positions[0] + len(mine)))


async def test_events_without_a_workspace_go_to_the_system_chain(audit) -> None:
    batch = [event(actor="anonymous", type="session.login_failed", outcome="failure")] * 1
    await audit.ingest(*batch)
    assert await audit.chain("") == [(1, batch[0].event_id)]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"event_id": "not-hex"}, "invalid_event_id"),
        ({"event_id": "A" * 32}, "invalid_event_id"),
        ({"type": "session.made_up"}, "unknown_event_type"),
        ({"workspace": "ws_nope"}, "invalid_workspace_id"),
        ({"actor": "root"}, "invalid_actor"),
        ({"actor": "user:"}, "invalid_actor"),
        ({"subject": "somebody"}, "invalid_subject"),
        ({"ip": "999.1.1.1"}, "invalid_ip"),
        ({"outcome": "maybe"}, "invalid_outcome"),
        ({"reason": "x" * 257}, "invalid_reason"),
        ({"details": {"k": "v" * 257}}, "invalid_details"),
        ({"details": {"Bad-Key": "v"}}, "invalid_details"),
        ({"details": {f"k{i}": "v" for i in range(33)}}, "invalid_details"),
        ({"details": {f"k{i}": "v" * 200 for i in range(30)}}, "invalid_details"),
        ({"user_agent": "", "device": "d" * 129}, "invalid_device"),
    ],
)
async def test_one_bad_event_refuses_the_whole_batch(audit, change, code) -> None:
    ws = audit.workspace()
    fields = {"workspace": ws, **change}
    good = [event(workspace=ws) for _ in range(3)]
    bad = event(**fields)
    error = await audit.refused(audit.ingest(*good[:2], bad, good[2]), INVALID, code)
    assert "events[2]" in (error.details() or "")
    assert trailer(error, "palisade-invalid-item") == "2"
    assert await audit.count() == 0


async def test_occurred_at_must_be_sane(audit) -> None:
    ws = audit.workspace()
    future = audit.clock.now() + timedelta(minutes=10)
    await audit.refused(
        audit.ingest(event(workspace=ws, occurred_at=future)), INVALID, "invalid_occurred_at"
    )
    missing = event(workspace=ws)
    missing.ClearField("occurred_at")
    await audit.refused(audit.ingest(missing), INVALID, "invalid_occurred_at")
    ancient = event(workspace=ws)
    ancient.occurred_at.seconds = -62135596800  # year 1
    await audit.refused(audit.ingest(ancient), INVALID, "invalid_occurred_at")
    assert await audit.count() == 0


async def test_an_unknown_workspace_refuses_the_batch(audit) -> None:
    known = audit.workspace()
    unknown = f"ws_{uuid.uuid4().hex}"
    error = await audit.refused(
        audit.ingest(event(workspace=known), event(workspace=unknown)), INVALID, "unknown_workspace"
    )
    assert trailer(error, "palisade-invalid-item") == "1"
    assert await audit.count() == 0


async def test_known_workspaces_are_remembered(audit) -> None:
    ws = audit.workspace()
    await audit.ingest(event(workspace=ws))
    calls = audit.directory.calls
    audit.directory.down = True  # auth unreachable: a workspace seen before still works
    await audit.ingest(event(workspace=ws))
    assert audit.directory.calls == calls
    assert await audit.count() == 2


async def test_an_auth_outage_is_unavailable_and_stores_nothing(audit) -> None:
    audit.directory.down = True
    ws = audit.workspace()
    await audit.refused(
        audit.ingest(event(workspace=ws)), grpc.StatusCode.UNAVAILABLE, "unavailable"
    )
    assert await audit.count() == 0


async def test_a_crypto_outage_is_unavailable_and_stores_nothing(audit) -> None:
    ws = audit.workspace()
    await audit.crypto.running.server.stop(0)
    await audit.refused(
        audit.ingest(event(workspace=ws)), grpc.StatusCode.UNAVAILABLE, "unavailable"
    )
    assert await audit.count() == 0
    assert await audit.count("chains") == 0


async def test_too_many_events_in_one_batch(audit_factory, sqlite_url) -> None:
    async with audit_factory(sqlite_url, max_batch_events=3) as audit:
        ws = audit.workspace()
        await audit.refused(
            audit.ingest(*(event(workspace=ws) for _ in range(4))), INVALID, "batch_too_large"
        )


@pytest.mark.parametrize(
    "metadata",
    [
        lambda h: h.service("gateway"),  # the gateway's edge is for people's queries
        lambda h: h.person(user_id(), h.workspace()),
        lambda h: h.anonymous(),
    ],
)
async def test_only_recording_services_may_ingest(audit, metadata) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await audit.stub.Ingest(
            pb.IngestRequest(events=[event(workspace=audit.workspace())]),
            metadata=metadata(audit),
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await audit.count() == 0


async def test_pii_is_stored_only_encrypted(audit) -> None:
    ws = audit.workspace()
    ip, agent = "198.51.100.77", FIREFOX + " UniqueAgentMarker"
    await audit.ingest(event(workspace=ws, ip=ip, user_agent=agent, actor=f"user:{user_id()}"))
    async with audit.server.engine.connect() as conn:
        from sqlalchemy import text

        rows = (await conn.execute(text("SELECT * FROM events"))).all()
    dump = repr(rows).encode() + b"".join(
        bytes(v) for row in rows for v in row if isinstance(v, bytes | memoryview)
    )
    assert ip.encode() not in dump
    assert b"UniqueAgentMarker" not in dump
    assert b"Firefox 120" in dump  # the parsed device is kept in clear (not PII)


async def test_sources_and_bare_subjects(audit) -> None:
    ws = audit.workspace()
    user = user_id()
    await audit.ingest(event(workspace=ws, type="apikey.created", subject=user), source="apikeys")
    async with audit.server.engine.connect() as conn:
        from sqlalchemy import text

        row = (await conn.execute(text("SELECT source, subject FROM events"))).one()
    assert tuple(row) == ("apikeys", f"user:{user}")


async def test_a_service_cannot_record_another_services_event_types(audit) -> None:
    """apikeys (its own verified caller assertion) may record apikey.* events, never a sign-in:
    the batch is refused naming the event, and nothing of it is stored."""
    ws = audit.workspace()
    batch = [
        event(workspace=ws, type="apikey.created", subject=user_id()),
        event(workspace=ws, type="session.login_succeeded", actor=f"user:{user_id()}"),
    ]
    refused = await audit.refused(
        audit.ingest(*batch, source="apikeys"), INVALID, "event_type_not_allowed"
    )
    assert trailer(refused, "palisade-invalid-item") == "1"
    assert refused.details().startswith("events[1]: ")
    assert await audit.count() == 0
    assert await audit.count("chains") == 0
    rejected = audit.server.registry.get_sample_value(
        "palisade_audit_ingest_batches_rejected_total",
        {"source": "apikeys", "code": "event_type_not_allowed"},
    )
    assert rejected == 1
    # The same events from the services that emit them are stored.
    await audit.ingest(batch[0], source="apikeys")
    await audit.ingest(batch[1], source="auth")
    assert [e for _, e in await audit.chain(ws)] == [batch[0].event_id, batch[1].event_id]
