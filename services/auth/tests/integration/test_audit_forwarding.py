"""Auth forwards its security events to audit (palisade.common.audit_forwarder, wired in
server.py): a fake AuditService on a real gRPC server receives them as service:auth; while it
is down they wait in the outbox, and the lag shows on auth's metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from audit_fake import FakeAudit, FakeAuditServer
from sqlalchemy import create_engine, select

from palisade.auth.store import outbox
from palisade.common.caller import AssertionVerifier
from palisade.common.edge_keys import KeySource

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
async def audit() -> AsyncIterator[FakeAuditServer]:
    server = FakeAuditServer(FakeAudit(None))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _until(condition, seconds: float = 15.0) -> None:
    """Waits (real time, bounded) for the background forwarder (it polls every 50 ms here)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the forwarder never got there")
        await asyncio.sleep(0.02)


def _lag(harness) -> float:
    registry = harness.servers[0].registry
    return registry.get_sample_value("palisade_outbox_lag_seconds") or 0.0


async def test_auth_ships_its_events_to_audit_once_and_waits_out_an_outage(
    auth_factory, audit
) -> None:
    async with auth_factory(audit_target=audit.target, audit_poll_seconds=0.05) as auth:
        audit.fake.verifier = AssertionVerifier(
            keys=KeySource.from_master(auth.master, "audit"), clock=auth.clock
        )
        first = await auth.sign_up("ada@example.com")
        await _until(lambda: any(e.subject == first.user_id for e in audit.fake.stored))
        assert set(audit.fake.principals) == {"service:auth"}
        shipped = [e for e in audit.fake.stored if e.subject == first.user_id]
        assert shipped[0].ip == "203.0.113.7"
        assert shipped[0].device  # the outbox's description of the User-Agent

        await audit.stop()
        seen = len(audit.fake.stored)
        second = await auth.sign_up("grace@example.com")
        auth.clock.advance(30)
        await _until(lambda: _lag(auth) >= 30)
        assert len(audit.fake.stored) == seen

        await audit.start()
        await _until(lambda: any(e.subject == second.user_id for e in audit.fake.stored))
        await _until(lambda: _lag(auth) == 0)

    ids = audit.fake.stored_ids
    assert len(ids) == len(set(ids))  # none twice
    engine = create_engine(auth.auth_db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(outbox).order_by(outbox.c.id)).all()
    engine.dispose()
    assert [row.event_id for row in rows] == ids  # every event, in id order
    for row in rows:
        assert row.forwarded_at is not None
        payload = json.loads(row.payload)
        assert (payload["ip"], payload["device"]) == (None, None)
