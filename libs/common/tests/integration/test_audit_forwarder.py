"""The audit forwarder (palisade.common.audit_forwarder) against a real gRPC server on port 0
running a fake AuditService, on SQLite and Postgres: outages, lost answers, refused events,
metrics, PII removal, and forwarders of several replicas on one database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import pytest
from audit_fake import FakeAudit, FakeAuditServer
from prometheus_client import CollectorRegistry
from sqlalchemy import MetaData, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.audit_forwarder import AuditForwarder
from palisade.common.audit_ingest import AuditIngestClient
from palisade.common.caller import AssertionSigner, AssertionVerifier
from palisade.common.clock import ManualClock
from palisade.common.db import create_engine
from palisade.common.edge_keys import KeyDocument, KeySource
from palisade.common.grpc_client import ServiceIdentity, relay_channel
from palisade.common.outbox import SecurityEvent, emit, outbox_table

WS_A = "ws_" + "a" * 32
WS_B = "ws_" + "b" * 32
metadata = MetaData()
outbox = outbox_table(metadata)


@dataclass
class Rig:
    engine: AsyncEngine
    clock: ManualClock
    server: FakeAuditServer
    master: KeyDocument
    url: str
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def fake(self) -> FakeAudit:
        return self.server.fake

    def forwarder(self, engine: AsyncEngine | None = None, **kwargs: object) -> AuditForwarder:
        signer = AssertionSigner(
            keys=KeySource.from_master(self.master, "auth"), clock=self.clock, ttl_seconds=60
        )
        channel = relay_channel(self.server.target)
        self._channels.append(channel)
        sink = AuditIngestClient(
            channel=channel, identity=ServiceIdentity(name="auth", signer=signer), timeout=5
        )
        options: dict[str, object] = {"registry": CollectorRegistry(), "batch_size": 50}
        options.update(kwargs)
        return AuditForwarder(
            engine=engine or self.engine,
            table=outbox,
            sink=sink,
            service="auth",
            clock=self.clock,
            **options,  # type: ignore[arg-type]
        )

    async def emit(self, count: int, workspace: str = WS_A, **fields: object) -> list[str]:
        ids = []
        for _ in range(count):
            event = SecurityEvent(
                type="session.login_succeeded",
                occurred_at=self.clock.now(),
                actor="user:usr_" + "1" * 32,
                subject="usr_" + "1" * 32,
                workspace_id=workspace,
                ip="203.0.113.7",
                device="Firefox 120 on Linux",
                details={"method": "password", "remember": True, "attempt": 1, "unset": None},
                **fields,  # type: ignore[arg-type]
            )
            async with self.engine.begin() as conn:
                await emit(conn, outbox, event)
            ids.append(event.event_id)
        return ids

    async def rows(self) -> list[dict[str, object]]:
        async with self.engine.connect() as conn:
            found = (await conn.execute(select(outbox).order_by(outbox.c.id))).all()
        return [dict(row._mapping) for row in found]


async def _engine(url: str) -> AsyncEngine:
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    async with _rig(database_url) as made:
        yield made


@pytest.fixture
async def pg_rig(postgres_url: str) -> AsyncIterator[Rig]:
    async with _rig(postgres_url) as made:
        yield made


@asynccontextmanager
async def _rig(database_url: str) -> AsyncIterator[Rig]:
    master = KeyDocument.generate()
    clock = ManualClock()
    server = FakeAuditServer(
        FakeAudit(AssertionVerifier(keys=KeySource.from_master(master, "audit"), clock=clock))
    )
    await server.start()
    engine = await _engine(database_url)
    rig = Rig(engine, clock, server, master, database_url)
    try:
        yield rig
    finally:
        for channel in rig._channels:
            await channel.close(None)
        await server.stop()
        await engine.dispose()


async def _until_forwarded(forwarder: AuditForwarder, rounds: int = 100) -> None:
    """Passes until one gets through: a restarted peer takes the channel a moment to find."""
    for _ in range(rounds):
        result = await forwarder.forward_once()
        if result.failed is None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the forwarder never got through")


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_events_emitted_while_audit_is_down_arrive_once_and_in_order(rig) -> None:
    registry = CollectorRegistry()
    forwarder = rig.forwarder(registry=registry)
    await rig.server.stop()
    ids = await rig.emit(3, WS_A) + await rig.emit(2, WS_B) + await rig.emit(2, WS_A)

    for _ in range(3):
        result = await forwarder.forward_once()
        assert result.failed == "unavailable"
        assert result.forwarded == 0
    assert all(row["forwarded_at"] is None for row in await rig.rows())
    assert await forwarder.observe() == (7, 0.0)
    assert _sample(registry, "palisade_outbox_batches_failed_total", reason="unavailable") == 3

    await rig.server.start()
    await _until_forwarded(forwarder)
    assert rig.fake.stored_ids == ids
    assert set(rig.fake.principals) == {"service:auth"}
    calls = len(rig.fake.calls)
    assert (await forwarder.forward_once()).forwarded == 0
    assert len(rig.fake.calls) == calls  # a forwarded row is never sent again
    assert await forwarder.observe() == (0, 0.0)
    assert _sample(registry, "palisade_outbox_events_forwarded_total") == 7


async def test_a_batch_whose_answer_was_lost_is_sent_again_and_not_doubled(rig) -> None:
    forwarder = rig.forwarder()
    ids = await rig.emit(4)
    rig.fake.lose_answers = 1
    assert (await forwarder.forward_once()).failed == "unavailable"
    assert all(row["forwarded_at"] is None for row in await rig.rows())

    assert (await forwarder.forward_once()).forwarded == 4
    assert rig.fake.calls == [ids, ids]
    assert rig.fake.stored_ids == ids  # the second copy was a duplicate, kept once
    await forwarder.forward_once()
    assert rig.fake.calls == [ids, ids]


@pytest.mark.parametrize("named", [True, False], ids=["item-named", "bisected"])
async def test_a_refused_event_is_set_aside_and_the_rest_flow_in_order(rig, named) -> None:
    registry = CollectorRegistry()
    forwarder = rig.forwarder(registry=registry)
    ids = await rig.emit(9)
    rig.fake.refuse[ids[5]] = "unknown_event_type"
    rig.fake.name_the_item = named

    result = await forwarder.forward_once()
    assert (result.forwarded, result.rejected, result.failed) == (8, 1, None)
    assert rig.fake.stored_ids == ids[:5] + ids[6:]
    rows = await rig.rows()
    assert [(r["rejected_code"], r["forwarded_at"] is None) for r in rows if r["rejected_at"]] == [
        ("unknown_event_type", True)
    ]
    refused = next(r for r in rows if r["event_id"] == ids[5])
    assert json.loads(str(refused["payload"]))["ip"] == "203.0.113.7"  # kept whole, not lost
    assert (
        _sample(registry, "palisade_outbox_events_rejected_total", code="unknown_event_type") == 1
    )

    # Set aside for good: later passes neither send it nor count it as pending.
    more = await rig.emit(1)
    await forwarder.forward_once()
    assert rig.fake.calls[-1] == more
    assert (await forwarder.observe())[0] == 0


async def test_an_unreadable_row_is_set_aside_without_a_call(rig) -> None:
    forwarder = rig.forwarder()
    ids = await rig.emit(2)
    async with rig.engine.begin() as conn:
        await conn.execute(update(outbox).where(outbox.c.event_id == ids[0]).values(payload="{"))
    result = await forwarder.forward_once()
    assert (result.forwarded, result.rejected) == (1, 1)
    assert rig.fake.calls == [[ids[1]]]
    assert [r["rejected_code"] for r in await rig.rows()] == ["unreadable_event", None]


async def test_forwarded_rows_keep_no_ip_or_device(rig) -> None:
    forwarder = rig.forwarder()
    await rig.emit(1)
    await forwarder.forward_once()
    [sent] = rig.fake.stored
    assert (sent.ip, sent.device, sent.user_agent) == ("203.0.113.7", "Firefox 120 on Linux", "")
    assert (sent.workspace_id, sent.outcome, sent.subject) == (WS_A, "success", "usr_" + "1" * 32)
    assert dict(sent.details) == {"method": "password", "remember": "true", "attempt": "1"}
    assert sent.occurred_at.ToDatetime().replace(tzinfo=rig.clock.now().tzinfo) == rig.clock.now()
    [row] = await rig.rows()
    payload = json.loads(str(row["payload"]))
    assert (payload["ip"], payload["device"]) == (None, None)
    assert payload["workspace_id"] == WS_A
    assert payload["details"]["method"] == "password"
    assert row["forwarded_at"] == rig.clock.now()


async def test_the_lag_metric_is_the_age_of_the_oldest_pending_event(rig) -> None:
    registry = CollectorRegistry()
    forwarder = rig.forwarder(registry=registry)
    await rig.server.stop()
    await rig.emit(1)
    rig.clock.advance(30)
    await rig.emit(2)
    rig.clock.advance(12)
    await forwarder.forward_once()
    assert await forwarder.observe() == (3, 42.0)
    assert _sample(registry, "palisade_outbox_lag_seconds") == 42.0
    assert _sample(registry, "palisade_outbox_pending_events") == 3
    await rig.server.start()
    await _until_forwarded(forwarder)
    assert await forwarder.observe() == (0, 0.0)
    assert _sample(registry, "palisade_outbox_lag_seconds") == 0.0


async def test_forwarded_rows_are_purged_after_their_retention(rig) -> None:
    forwarder = rig.forwarder(forwarded_retention=timedelta(days=1))
    await rig.emit(3)
    await forwarder.forward_once()
    rig.clock.advance(timedelta(days=1, seconds=1))
    newer = await rig.emit(1)
    await forwarder.forward_once()
    rows = await rig.rows()
    # The newest forwarded row stays (what the next hole check compares with).
    assert [r["event_id"] for r in rows] == newer


async def test_failures_back_off_exponentially_with_jitter(rig) -> None:
    waits: list[float] = []
    four = asyncio.Event()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) >= 4:
            four.set()
        await asyncio.sleep(0)

    forwarder = rig.forwarder(
        sleep=sleep, jitter=lambda: 0.5, first_backoff_seconds=1, max_backoff_seconds=4
    )
    await rig.server.stop()
    await rig.emit(1)
    async with forwarder.running():
        await asyncio.wait_for(four.wait(), 10)
    # Half fixed, half random (0.5 here) of 1, 2, 4, 4 seconds.
    assert waits[:4] == [0.75, 1.5, 3.0, 3.0]
    assert all(row["forwarded_at"] is None for row in await rig.rows())


@pytest.mark.postgres
async def test_two_forwarders_on_one_postgres_database_never_interleave(pg_rig) -> None:
    other_engine = await _engine(pg_rig.url)
    try:
        first, second = pg_rig.forwarder(batch_size=5), pg_rig.forwarder(other_engine, batch_size=5)
        ids = await pg_rig.emit(10, WS_A)
        pg_rig.fake.gate = asyncio.Event()
        held = asyncio.create_task(first.forward_once())
        await asyncio.wait_for(pg_rig.fake.entered.wait(), 10)
        # The first holds its turn across the call: the other replica's pass stands aside.
        assert (await second.forward_once()).busy
        pg_rig.fake.gate.set()
        assert (await held).forwarded == 5

        ids += await pg_rig.emit(30, WS_B)

        async def drain(forwarder: AuditForwarder) -> None:
            for _ in range(40):
                await forwarder.forward_once()
                await asyncio.sleep(0)

        await asyncio.gather(drain(first), drain(second))
        assert pg_rig.fake.most_active == 1
        assert pg_rig.fake.stored_ids == ids
        sent = [event_id for call in pg_rig.fake.calls for event_id in call]
        assert sent == ids  # every event sent once, in id order
    finally:
        await other_engine.dispose()


@pytest.mark.postgres
async def test_a_later_id_waits_for_an_earlier_one_still_committing(pg_rig) -> None:
    now = [0.0]
    forwarder = pg_rig.forwarder(monotonic=lambda: now[0], gap_grace_seconds=5)
    [first] = await pg_rig.emit(1)
    await forwarder.forward_once()
    slow = await pg_rig.engine.connect()
    try:
        await slow.begin()
        late = SecurityEvent(type="session.login_succeeded", occurred_at=pg_rig.clock.now())
        await emit(slow, outbox, late)  # takes the next id, not committed yet
        quick = await pg_rig.emit(1)
        assert (await forwarder.forward_once()).forwarded == 0  # a hole before it
        await slow.commit()
    finally:
        await slow.close()
    assert (await forwarder.forward_once()).forwarded == 2
    assert pg_rig.fake.stored_ids == [first, late.event_id, *quick]


@pytest.mark.postgres
async def test_a_hole_left_by_a_rollback_is_passed_after_the_grace_period(pg_rig) -> None:
    now = [0.0]
    forwarder = pg_rig.forwarder(monotonic=lambda: now[0], gap_grace_seconds=5)
    async with pg_rig.engine.connect() as conn:
        await conn.begin()
        await emit(conn, outbox, SecurityEvent(type="x", occurred_at=pg_rig.clock.now()))
        await conn.rollback()
    after = await pg_rig.emit(2)
    assert (await forwarder.forward_once()).forwarded == 0
    now[0] = 4.9
    assert (await forwarder.forward_once()).forwarded == 0
    now[0] = 5.0
    assert (await forwarder.forward_once()).forwarded == 2
    assert pg_rig.fake.stored_ids == after


async def test_a_commit_that_emitted_wakes_the_forwarder_before_its_poll(rig) -> None:
    """With an hour's poll interval, an emitted event still reaches audit at once: the commit
    rings the forwarder (outbox.OUTBOX_WAKE_FLAG on the pooled connection) as
    forwarding_to_audit wires it."""
    from palisade.common.audit_forwarder import woken_or_polled
    from palisade.common.outbox import OUTBOX_WAKE_FLAG
    from palisade.common.relay_loop import Wakeup

    wakeup = Wakeup()
    forwarder = rig.forwarder(
        poll_seconds=3600.0, idle_wait=lambda seconds: woken_or_polled(wakeup, seconds)
    )
    async with wakeup.ring_on_checkin(rig.engine, OUTBOX_WAKE_FLAG), forwarder.running():
        first = await rig.emit(1)
        await _until_stored(rig, first)
        # Now idle (drained), waiting out its hour: the next commit must cut the wait short.
        second = await rig.emit(2)
        await _until_stored(rig, first + second)
    assert rig.fake.stored_ids == first + second


async def _until_stored(rig: Rig, ids: list[str], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while rig.fake.stored_ids != ids:  # noqa: ASYNC110 (the fake records; no event to await)
            await asyncio.sleep(0.01)
