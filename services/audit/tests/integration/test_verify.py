"""palisade-audit verify: exit 0 for an intact log, 1 naming what broke, on SQLite and Postgres.

Each test tampers with the database directly, as someone with write access to it would.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from dataclasses import replace

from sqlalchemy import text

from palisade.audit.chain.hashing import event_hash
from palisade.audit.cli import main
from palisade.audit.store import select_events, stored_event
from palisade.audit.tables import events
from palisade_api.audit.v1 import audit_pb2 as pb

from .audit_support import event, user_id

COLUMNS = (
    "tx_order, workspace_id, prev_hash, hash, type, occurred_at, recorded_at, source, actor, "
    "subject, ip_ct, user_agent_ct, location_ct, pii_erased, device_browser, device_os, "
    "device_kind, outcome, reason, details"
)


def _run(audit, *argv: str) -> tuple[int, list[dict], str]:
    out = io.StringIO()
    code = main(["verify", *argv], settings=audit.settings, out=out, clock=audit.clock)
    lines = out.getvalue().splitlines()
    problems = [json.loads(line) for line in lines if line.startswith("{")]
    return code, problems, out.getvalue()


async def verify(audit, *argv: str) -> tuple[int, list[dict], str]:
    return await asyncio.to_thread(_run, audit, *argv)


async def _chain(audit, size: int = 6) -> str:
    ws = audit.workspace()
    await audit.ingest(*(event(workspace=ws, actor=f"user:{user_id()}") for _ in range(size)))
    return ws


async def _shift(audit, ws: str, from_seq: int, by: int) -> None:
    """Renumbers events from from_seq on by `by` (in two steps: seq is unique per chain)."""
    await audit.execute(
        "UPDATE events SET seq = seq + 1000000 WHERE workspace_id = :w AND seq >= :s",
        w=ws,
        s=from_seq,
    )
    await audit.execute(
        "UPDATE events SET seq = seq - 1000000 + :by WHERE workspace_id = :w AND seq >= 1000000",
        w=ws,
        by=by,
    )


async def _rehash(audit, ws: str, seq: int, **changes) -> None:
    """Changes an event and stores the hash of its new content (as a careful attacker would)."""
    async with audit.server.engine.begin() as conn:
        row = (
            await conn.execute(
                select_events().where(events.c.workspace_id == ws, events.c.seq == seq)
            )
        ).one()
        sealed = replace(stored_event(row).sealed, **changes)
        await conn.execute(
            events.update()
            .where(events.c.workspace_id == ws, events.c.seq == seq)
            .values(hash=event_hash(sealed), **changes)
        )


async def _checkpoint(audit, ws: str) -> pb.Checkpoint:
    return await audit.stub.GetCheckpoint(
        pb.GetCheckpointRequest(), metadata=audit.person(user_id(), ws)
    )


async def test_an_intact_log_verifies(audit) -> None:
    a, b = await _chain(audit), await _chain(audit, 3)
    await audit.ingest(event(type="session.login_failed", actor="anonymous", outcome="failure"))
    await _checkpoint(audit, a)
    await audit.ingest(event(workspace=a))
    await _checkpoint(audit, a)
    await _checkpoint(audit, b)
    code, problems, output = await verify(audit)
    assert (code, problems) == (0, []), output
    assert "3 chain(s) intact" in output
    code, problems, _ = await verify(audit, "--workspace", a)
    assert (code, problems) == (0, [])


async def test_an_edited_row(audit) -> None:
    ws = await _chain(audit)
    await audit.execute(
        "UPDATE events SET reason = 'nothing_to_see' WHERE workspace_id = :w AND seq = 3", w=ws
    )
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [(p["workspace"], p["seq"], p["what"]) for p in problems] == [(ws, 3, "edited")]


async def test_an_edited_row_with_its_hash_recomputed(audit) -> None:
    ws = await _chain(audit)
    await _rehash(audit, ws, 3, reason="nothing_to_see")
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(3, "edited")]


async def test_a_deleted_row(audit) -> None:
    ws = await _chain(audit)
    await audit.execute("DELETE FROM events WHERE workspace_id = :w AND seq = 3", w=ws)
    code, problems, _ = await verify(audit, "--workspace", ws)
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(3, "deleted")]


async def test_a_deleted_row_with_the_rest_renumbered(audit) -> None:
    ws = await _chain(audit)
    await audit.execute("DELETE FROM events WHERE workspace_id = :w AND seq = 3", w=ws)
    await _shift(audit, ws, 4, -1)
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(3, "deleted")]


async def test_the_last_row_deleted(audit) -> None:
    ws = await _chain(audit)
    await audit.execute("DELETE FROM events WHERE workspace_id = :w AND seq = 6", w=ws)
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(6, "deleted")]


async def test_an_inserted_row(audit) -> None:
    ws = await _chain(audit)
    await _shift(audit, ws, 3, 1)
    await audit.execute(
        f"INSERT INTO events (event_id, seq, {COLUMNS}) SELECT :e, 3, {COLUMNS} FROM events "
        "WHERE workspace_id = :w AND seq = 2",
        e=uuid.uuid4().hex,
        w=ws,
    )
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(3, "inserted")]


async def test_a_row_added_after_the_head(audit) -> None:
    ws = await _chain(audit)
    await audit.execute(
        f"INSERT INTO events (event_id, seq, {COLUMNS}) SELECT :e, 7, {COLUMNS} FROM events "
        "WHERE workspace_id = :w AND seq = 6",
        e=uuid.uuid4().hex,
        w=ws,
    )
    code, problems, _ = await verify(audit)
    assert code == 1
    assert {p["what"] for p in problems} == {"inserted"}
    assert 7 in {p["seq"] for p in problems}


async def test_two_rows_swapped(audit) -> None:
    ws = await _chain(audit)
    await audit.execute("UPDATE events SET seq = -1 WHERE workspace_id = :w AND seq = 3", w=ws)
    await audit.execute("UPDATE events SET seq = 3 WHERE workspace_id = :w AND seq = 4", w=ws)
    await audit.execute("UPDATE events SET seq = 4 WHERE workspace_id = :w AND seq = -1", w=ws)
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(4, "reordered")]


async def test_a_tampered_checkpoint(audit) -> None:
    ws = await _chain(audit)
    await _checkpoint(audit, ws)
    await audit.execute("UPDATE checkpoints SET size = size - 1 WHERE workspace_id = :w", w=ws)
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [p["what"] for p in problems] == ["bad_signature"]


async def test_a_consistent_rewrite_is_caught_by_the_checkpoint(audit) -> None:
    """Rewriting a row and every hash after it defeats the links (SHA-256 needs no secret);
    the signed checkpoint still knows the old head."""
    ws = await _chain(audit)
    await _checkpoint(audit, ws)
    await _rehash(audit, ws, 2, reason="rewritten")
    async with audit.server.engine.connect() as conn:
        digest = (
            await conn.execute(
                text("SELECT hash FROM events WHERE workspace_id = :w AND seq = 2"), {"w": ws}
            )
        ).scalar_one()
    for seq in range(3, 7):
        await _rehash(audit, ws, seq, prev_hash=bytes(digest))
        async with audit.server.engine.connect() as conn:
            digest = (
                await conn.execute(
                    text("SELECT hash FROM events WHERE workspace_id = :w AND seq = :s"),
                    {"w": ws, "s": seq},
                )
            ).scalar_one()
    await audit.execute("UPDATE chains SET head = :h WHERE workspace_id = :w", h=digest, w=ws)
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(6, "checkpoint_mismatch")]


async def test_verify_with_published_public_keys_only(audit, tmp_path) -> None:
    ws = await _chain(audit)
    await _checkpoint(audit, ws)
    listed = await audit.stub.ListSigningKeys(
        pb.ListSigningKeysRequest(), metadata=audit.anonymous()
    )
    keys_file = tmp_path / "published-keys.json"
    keys_file.write_text(
        json.dumps(
            {
                "keys": [
                    {"keyId": k.key_id, "algorithm": k.algorithm, "publicKey": k.public_key}
                    for k in listed.keys
                ]
            }
        )
    )
    code, problems, _ = await verify(audit, "--public-keys", str(keys_file))
    assert (code, problems) == (0, [])
    keys_file.write_text(json.dumps({"keys": []}))
    code, problems, _ = await verify(audit, "--public-keys", str(keys_file))
    assert code == 1
    assert [p["what"] for p in problems] == ["bad_signature"]
