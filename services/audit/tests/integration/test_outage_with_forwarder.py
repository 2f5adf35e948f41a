"""The audit service stopped while a service keeps producing events, then started again: with
palisade.common's forwarder shipping a real outbox, every event arrives exactly once, in order
per workspace, and the log verifies (SQLite and Postgres)."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime

from ports import port_for_later
from sqlalchemy import MetaData, select, text

from palisade.audit.cli import main
from palisade.audit.server import serve_audit
from palisade.common.audit_forwarder import AuditForwarder
from palisade.common.audit_ingest import AuditIngestClient
from palisade.common.caller import AssertionSigner
from palisade.common.db import create_engine
from palisade.common.edge_keys import KeySource
from palisade.common.grpc_client import ServiceIdentity, relay_channel
from palisade.common.outbox import SecurityEvent, emit, outbox_table

from .audit_support import user_id


def _port() -> int:
    """A port for a server started later: below the ephemeral range, so no client
    connection takes it first (ports.port_for_later)."""
    return port_for_later()


async def _drain(forwarder: AuditForwarder) -> None:
    """Passes until one finds nothing to ship (the forwarder's own loop would back off)."""
    for _ in range(50):
        result = await forwarder.forward_once()
        assert result.failed is None, result
        if not result.forwarded:
            return
    raise AssertionError("the outbox never drained")


async def test_an_outage_delays_events_and_loses_none(audit_factory, database_url, tmp_path):
    port = _port()
    async with audit_factory(database_url, grpc_port=port) as audit:
        workspaces = [audit.workspace() for _ in range(3)]
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'service-outbox.db'}")
        metadata = MetaData()
        table = outbox_table(metadata)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        signer = AssertionSigner(
            keys=KeySource.from_master(audit.master, "auth"), clock=audit.clock, ttl_seconds=60
        )
        channel = relay_channel(f"127.0.0.1:{port}")
        forwarder = AuditForwarder(
            engine=engine,
            table=table,
            sink=AuditIngestClient(
                channel=channel, identity=ServiceIdentity(name="auth", signer=signer)
            ),
            service="auth",
            clock=audit.clock,
            batch_size=7,
        )
        emitted: list[SecurityEvent] = []

        async def produce(count: int) -> None:
            for i in range(count):
                event = SecurityEvent(
                    type="session.login_succeeded",
                    occurred_at=datetime.now(UTC),
                    actor=f"user:{user_id()}",
                    workspace_id=workspaces[i % len(workspaces)],
                    ip="198.51.100.7",
                    device="Firefox 120 on Linux",
                )
                async with engine.begin() as conn:  # each in its own transaction, as a service
                    await emit(conn, table, event)
                emitted.append(event)

        try:
            await produce(10)
            await _drain(forwarder)
            assert await audit.count() == 10
            await audit.server.running.server.stop(0)  # audit goes away
            await produce(15)
            failed = await forwarder.forward_once()
            assert failed.forwarded == 0
            assert failed.failed is not None
            async with engine.connect() as conn:
                pending = (
                    await conn.execute(
                        select(table.c.event_id).where(table.c.forwarded_at.is_(None))
                    )
                ).all()
            assert len(pending) == 15  # waiting in the outbox, not lost
            async with serve_audit(audit.settings, clock=audit.clock, background=False) as again:
                await asyncio.wait_for(channel.channel_ready(), timeout=10)  # reconnected
                await produce(5)
                await _drain(forwarder)
                async with again.engine.connect() as conn:
                    stored = (
                        await conn.execute(
                            text("SELECT workspace_id, seq, event_id FROM events ORDER BY id")
                        )
                    ).all()
        finally:
            await channel.close()
            await engine.dispose()
        ids = [row[2] for row in stored]
        assert len(ids) == len(set(ids)) == 30
        assert set(ids) == {e.event_id for e in emitted}
        for ws in workspaces:
            chain = sorted((seq, event_id) for w, seq, event_id in stored if w == ws)
            expected = [e.event_id for e in emitted if e.workspace_id == ws]
            assert [event_id for _, event_id in chain] == expected  # emission order
            assert [seq for seq, _ in chain] == list(range(1, len(expected) + 1))
        out = io.StringIO()
        code = await asyncio.to_thread(
            main, ["verify"], settings=audit.settings, out=out, clock=audit.clock
        )
        assert code == 0, out.getvalue()


async def test_a_type_the_service_may_not_emit_is_set_aside_and_the_rest_flows(
    audit_factory, database_url, tmp_path
) -> None:
    """A misbehaving apikeys emits an auth event between two of its own: audit refuses it
    (event_type_not_allowed, naming it), the forwarder sets that one aside in the outbox and
    ships the others in order; nothing wedges."""
    async with audit_factory(database_url) as audit:
        ws = audit.workspace()
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'apikeys-outbox.db'}")
        metadata = MetaData()
        table = outbox_table(metadata)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        signer = AssertionSigner(
            keys=KeySource.from_master(audit.master, "apikeys"), clock=audit.clock, ttl_seconds=60
        )
        channel = relay_channel(audit.server.running.target)
        forwarder = AuditForwarder(
            engine=engine,
            table=table,
            sink=AuditIngestClient(
                channel=channel, identity=ServiceIdentity(name="apikeys", signer=signer)
            ),
            service="apikeys",
            clock=audit.clock,
            batch_size=10,
        )
        types = ["apikey.created", "session.login_succeeded", "apikey.revoked"]
        emitted = [
            SecurityEvent(
                type=event_type,
                occurred_at=datetime.now(UTC),
                actor=f"user:{user_id()}",
                workspace_id=ws,
            )
            for event_type in types
        ]
        try:
            for event in emitted:
                async with engine.begin() as conn:
                    await emit(conn, table, event)
            result = await forwarder.forward_once()
            assert (result.forwarded, result.rejected, result.failed) == (2, 1, None)
            async with engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(
                            table.c.event_type, table.c.forwarded_at, table.c.rejected_code
                        ).order_by(table.c.id)
                    )
                ).all()
        finally:
            await channel.close()
            await engine.dispose()
        assert [(t, f is not None, c) for t, f, c in rows] == [
            ("apikey.created", True, None),
            ("session.login_succeeded", False, "event_type_not_allowed"),
            ("apikey.revoked", True, None),
        ]
        assert [e for _, e in await audit.chain(ws)] == [emitted[0].event_id, emitted[2].event_id]
