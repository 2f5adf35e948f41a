"""Retention keeps the rest verifiable; export gives SIEMs JSON lines and OCSF."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta

from palisade.audit.cli import main
from palisade_api.audit.v1 import audit_pb2 as pb

from .audit_support import FIREFOX, event, user_id


def _cli(audit, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), settings=audit.settings, out=out, clock=audit.clock)
    return code, out.getvalue()


async def cli(audit, *argv: str) -> tuple[int, str]:
    return await asyncio.to_thread(_cli, audit, *argv)


async def test_a_purge_keeps_the_chain_verifiable(audit_factory, database_url) -> None:
    async with audit_factory(database_url, retention_days=30) as audit:
        ws = audit.workspace()
        await audit.ingest(*(event(workspace=ws) for _ in range(3)))
        audit.clock.advance(timedelta(days=31))
        await audit.ingest(*(event(workspace=ws, occurred_at=audit.clock.now()) for _ in range(2)))
        assert await audit.server.purger.purge() == 3
        assert [seq for seq, _ in await audit.chain(ws)] == [4, 5]
        code, output = await cli(audit, "verify")
        assert code == 0, output
        await audit.ingest(event(workspace=ws, occurred_at=audit.clock.now()))
        checkpoint = await audit.stub.GetCheckpoint(
            pb.GetCheckpointRequest(), metadata=audit.person(user_id(), ws)
        )
        assert checkpoint.size == 6
        assert (await cli(audit, "verify"))[0] == 0
        assert await audit.server.purger.purge() == 0  # nothing old left
        # Everything old: the whole chain goes; new events still link to the anchor.
        audit.clock.advance(timedelta(days=31))
        assert await audit.server.purger.purge() == 3
        assert await audit.chain(ws) == []
        await audit.ingest(event(workspace=ws, occurred_at=audit.clock.now()))
        assert (await cli(audit, "verify"))[0] == 0
        purged = audit.server.registry.get_sample_value("palisade_audit_events_purged_total")
        assert purged == 6


async def test_tampering_after_a_purge_is_still_caught(audit_factory, database_url) -> None:
    async with audit_factory(database_url, retention_days=1) as audit:
        ws = audit.workspace()
        await audit.ingest(*(event(workspace=ws) for _ in range(3)))
        audit.clock.advance(timedelta(days=2))
        await audit.ingest(*(event(workspace=ws, occurred_at=audit.clock.now()) for _ in range(2)))
        await audit.server.purger.purge()
        # The anchor moved to claim other rows were never there: it no longer matches its
        # signed checkpoint.
        await audit.execute(
            "UPDATE chains SET anchor_head = :h WHERE workspace_id = :w", h=b"\x01" * 32, w=ws
        )
        code, output = await cli(audit, "verify")
        assert code == 1
        assert "checkpoint_mismatch" in output


async def test_a_purge_refuses_a_tampered_prefix(audit_factory, sqlite_url) -> None:
    async with audit_factory(sqlite_url, retention_days=1) as audit:
        ws = audit.workspace()
        await audit.ingest(*(event(workspace=ws) for _ in range(3)))
        await audit.execute(
            "UPDATE events SET reason = 'x' WHERE workspace_id = :w AND seq = 2", w=ws
        )
        audit.clock.advance(timedelta(days=2))
        assert await audit.server.purger.purge() == 0
        assert len(await audit.chain(ws)) == 3  # the evidence stays


async def test_export_as_json_lines_and_ocsf(audit) -> None:
    ws = audit.workspace()
    person, gone = user_id(), user_id()
    now = audit.clock.now()
    login = event(
        workspace=ws, actor=f"user:{person}", subject=person, occurred_at=now - timedelta(hours=2)
    )
    failed = event(
        workspace=ws,
        type="session.login_failed",
        actor="anonymous",
        subject=gone,
        outcome="failure",
        reason="wrong_password",
        occurred_at=now - timedelta(hours=1),
    )
    reset = event(workspace=ws, type="password.reset", actor=f"user:{person}", occurred_at=now)
    await audit.ingest(login, failed, reset, event(workspace=audit.workspace()))
    await audit.shred(f"user:{gone}")

    code, output = await cli(audit, "export", "--workspace", ws)
    assert code == 0
    lines = [json.loads(line) for line in output.splitlines()]
    assert [line["id"] for line in lines] == [login.event_id, failed.event_id, reset.event_id]
    assert lines[0]["ip"] == "198.51.100.7"
    assert lines[0]["userAgent"] == FIREFOX
    assert lines[0]["actor"] == {"type": "user", "id": person}
    assert lines[0]["sequence"] == 1
    assert lines[1]["prevHash"] == lines[0]["hash"]
    assert lines[1]["erased"] is True
    assert "ip" not in lines[1]  # erased: no PII left to export

    code, output = await cli(audit, "export", "--workspace", ws, "--format", "ocsf")
    assert code == 0
    records = [json.loads(line) for line in output.splitlines()]
    assert [(r["class_uid"], r["activity_id"], r["type_uid"]) for r in records] == [
        (3002, 1, 300201),
        (3002, 1, 300201),
        (3001, 4, 300104),
    ]
    assert records[0]["src_endpoint"]["ip"] == "198.51.100.7"
    assert records[0]["user"]["uid"] == person
    assert records[1]["status_id"] == 2
    assert records[1]["status_detail"] == "wrong_password"
    assert records[2]["class_name"] == "Account Change"
    assert records[2]["metadata"]["uid"] == reset.event_id

    since = (now - timedelta(minutes=90)).isoformat()
    code, output = await cli(audit, "export", "--workspace", ws, "--since", since)
    assert [json.loads(line)["id"] for line in output.splitlines()] == [
        failed.event_id,
        reset.event_id,
    ]


async def test_export_with_crypto_down_fails_cleanly(audit) -> None:
    ws = audit.workspace()
    await audit.ingest(event(workspace=ws))
    await audit.crypto.running.server.stop(0)
    code, output = await cli(audit, "export", "--workspace", ws)
    assert code == 1
    assert output == ""
