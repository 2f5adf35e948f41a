"""A purge interrupted between its steps leaves a log that verifies, on SQLite and Postgres.

The purge signs the boundary's checkpoint and the retention anchor, moves the chain's start and
deletes the prefix in one transaction, then appends the checkpoint to the witness file. Faults
are injected between those steps (an exception, or the task cancelled while it waits, as a
process that dies mid-transaction leaves it to the database to roll back).
"""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta

import pytest
from sqlalchemy import text

from palisade.audit import retention
from palisade.audit.cli import main
from palisade_api.audit.v1 import audit_pb2 as pb

from .audit_support import Harness, event, user_id


class Crash(Exception):
    pass


def _verify(audit: Harness) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["verify"], settings=audit.settings, out=out, clock=audit.clock)
    return code, out.getvalue()


async def verify(audit: Harness) -> tuple[int, str]:
    return await asyncio.to_thread(_verify, audit)


async def _expired_chain(audit: Harness) -> str:
    """Three events past retention, a checkpoint over them, then two recent ones and a
    checkpoint over all five (both witnessed)."""
    ws = audit.workspace()
    await audit.ingest(*(event(workspace=ws) for _ in range(3)))
    owner = audit.person(user_id(), ws)
    await audit.stub.GetCheckpoint(pb.GetCheckpointRequest(), metadata=owner)
    audit.clock.advance(timedelta(days=2))
    await audit.ingest(*(event(workspace=ws, occurred_at=audit.clock.now()) for _ in range(2)))
    await audit.stub.GetCheckpoint(pb.GetCheckpointRequest(), metadata=owner)
    return ws


async def _untouched(audit: Harness, ws: str) -> None:
    assert [seq for seq, _ in await audit.chain(ws)] == [1, 2, 3, 4, 5]
    assert await audit.count("anchors") == 0
    async with audit.server.engine.connect() as conn:
        kinds = (
            await conn.execute(
                text("SELECT kind FROM checkpoints WHERE workspace_id = :w"), {"w": ws}
            )
        ).scalars()
        assert sorted(kinds) == ["on_demand", "on_demand"]
        anchor = (
            await conn.execute(
                text("SELECT anchor_size FROM chains WHERE workspace_id = :w"), {"w": ws}
            )
        ).scalar_one()
    assert anchor == 0


async def test_a_crash_after_the_anchor_is_signed_and_before_the_delete(
    audit_factory, database_url, monkeypatch
) -> None:
    async with audit_factory(database_url, retention_days=1) as audit:
        ws = await _expired_chain(audit)

        async def crash(*_: object) -> None:
            raise Crash()

        # Between storing the signed checkpoint and anchor and moving the chain's start.
        monkeypatch.setattr(retention, "set_anchor", crash)
        with pytest.raises(Crash):
            await audit.server.purger.purge()
        await _untouched(audit, ws)
        code, output = await verify(audit)
        assert code == 0, output
        monkeypatch.undo()
        assert await audit.server.purger.purge() == 3  # the next pass purges it
        assert await audit.count("anchors") == 1
        code, output = await verify(audit)
        assert code == 0, output


async def test_a_process_dying_mid_purge_leaves_the_chain_whole(
    audit_factory, database_url, monkeypatch
) -> None:
    async with audit_factory(database_url, retention_days=1) as audit:
        ws = await _expired_chain(audit)
        reached = asyncio.Event()
        original = retention.set_anchor

        async def hang(*args: object) -> None:
            await original(*args)
            reached.set()
            await asyncio.Event().wait()  # the delete never comes: the process dies here

        monkeypatch.setattr(retention, "set_anchor", hang)
        purge = asyncio.create_task(audit.server.purger.purge())
        await asyncio.wait_for(reached.wait(), timeout=10)
        purge.cancel()
        with pytest.raises(asyncio.CancelledError):
            await purge
        await _untouched(audit, ws)
        code, output = await verify(audit)
        assert code == 0, output


async def test_a_crash_after_the_purge_and_before_the_witness_append(
    audit_factory, database_url, monkeypatch
) -> None:
    async with audit_factory(database_url, retention_days=1) as audit:
        ws = await _expired_chain(audit)
        witness = audit.settings.resolved_witness_file()
        before = witness.read_text()

        async def crash(*_: object) -> None:
            raise Crash()

        monkeypatch.setattr(audit.server.checkpoints, "witnessed", crash)
        with pytest.raises(Crash):
            await audit.server.purger.purge()
        assert [seq for seq, _ in await audit.chain(ws)] == [4, 5]  # committed
        assert await audit.count("anchors") == 1
        assert witness.read_text() == before  # the boundary's checkpoint never reached it
        code, output = await verify(audit)
        assert code == 0, output


async def test_a_crash_between_the_boundary_checkpoint_and_the_anchor(
    audit_factory, database_url, monkeypatch
) -> None:
    async with audit_factory(database_url, retention_days=1) as audit:
        ws = await _expired_chain(audit)

        async def crash(*_: object) -> None:
            raise Crash()

        monkeypatch.setattr(audit.server.checkpoints, "sign_anchor", crash)
        with pytest.raises(Crash):
            await audit.server.purger.purge()
        await _untouched(audit, ws)
        code, output = await verify(audit)
        assert code == 0, output
