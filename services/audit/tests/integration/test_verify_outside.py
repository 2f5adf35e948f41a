"""What the database cannot vouch for on its own, on SQLite and Postgres: where a chain starts
(a signed retention anchor, made only by the purge job) and where it ends (checkpoints kept
outside the database: the witness file, and one a client fetched from GET /v1/audit/checkpoint).

Each attack is carried out on the database directly, as someone with write access to it would,
and leaves what is left self-consistent: the premise is checked with --no-witness where the
database alone cannot tell.
"""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta
from pathlib import Path

import grpc
from google.protobuf import json_format
from sqlalchemy import text

from palisade.audit.cli import main
from palisade_api.audit.v1 import audit_pb2 as pb

from .audit_support import Harness, event, user_id


def _run(audit: Harness, *argv: str) -> tuple[int, list[dict], str]:
    out = io.StringIO()
    code = main(["verify", *argv], settings=audit.settings, out=out, clock=audit.clock)
    lines = out.getvalue().splitlines()
    return code, [json.loads(line) for line in lines if line.startswith("{")], out.getvalue()


async def verify(audit: Harness, *argv: str) -> tuple[int, list[dict], str]:
    return await asyncio.to_thread(_run, audit, *argv)


async def _grow(audit: Harness, ws: str, count: int) -> None:
    now = audit.clock.now()
    await audit.ingest(*(event(workspace=ws, occurred_at=now) for _ in range(count)))


async def _checkpoint(audit: Harness, ws: str) -> pb.Checkpoint:
    return await audit.stub.GetCheckpoint(
        pb.GetCheckpointRequest(), metadata=audit.person(user_id(), ws)
    )


def _as_served(checkpoint: pb.Checkpoint) -> str:
    """The JSON body of GET /v1/audit/checkpoint (the gateway's rendering of the message)."""
    return json.dumps(json_format.MessageToDict(checkpoint, preserving_proto_field_name=False))


async def _hash_at(audit: Harness, ws: str, seq: int) -> bytes:
    async with audit.server.engine.connect() as conn:
        digest = (
            await conn.execute(
                text("SELECT hash FROM events WHERE workspace_id = :w AND seq = :s"),
                {"w": ws, "s": seq},
            )
        ).scalar_one()
    return bytes(digest)


async def _truncate(audit: Harness, ws: str, keep: int) -> None:
    """Cuts the chain after event `keep`, with every checkpoint signed over what went, and
    moves the head row back: the database is consistent again."""
    head = await _hash_at(audit, ws, keep)
    await audit.execute("DELETE FROM events WHERE workspace_id = :w AND seq > :k", w=ws, k=keep)
    await audit.execute(
        "DELETE FROM checkpoints WHERE workspace_id = :w AND size > :k", w=ws, k=keep
    )
    await audit.execute(
        "UPDATE chains SET size = :k, head = :h WHERE workspace_id = :w", k=keep, h=head, w=ws
    )


def _witness_lines(audit: Harness) -> list[dict]:
    path = audit.settings.resolved_witness_file()
    return [json.loads(line) for line in path.read_text().splitlines()]


# Where a chain starts: only a purge's signed anchor.


async def test_a_chain_rebased_on_an_ordinary_checkpoint_is_caught(audit) -> None:
    ws = audit.workspace()
    await _grow(audit, ws, 3)
    ordinary = await _checkpoint(audit, ws)
    await _grow(audit, ws, 3)
    assert (await verify(audit))[0] == 0
    # Delete the oldest events and make the chain start at the checkpoint, as a purge would.
    await audit.execute("DELETE FROM events WHERE workspace_id = :w AND seq <= 3", w=ws)
    await audit.execute(
        "UPDATE chains SET anchor_size = 3, anchor_head = :h, anchor_checkpoint_id = "
        "(SELECT max(id) FROM checkpoints WHERE workspace_id = :w AND size = 3) "
        "WHERE workspace_id = :w",
        h=bytes.fromhex(ordinary.head),
        w=ws,
    )
    code, problems, output = await verify(audit)
    assert code == 1, output
    assert [(p["workspace"], p["seq"], p["what"]) for p in problems] == [
        (ws, 3, "checkpoint_mismatch")
    ]
    assert "no retention anchor" in problems[0]["detail"]
    # The service will not sign over it either: no checkpoint launders the cut.
    await _grow(audit, ws, 1)
    await audit.refused(_checkpoint(audit, ws), grpc.StatusCode.DATA_LOSS, "chain_integrity")


async def test_an_anchor_forged_from_a_checkpoints_signature_is_caught(audit) -> None:
    """The checkpoint's signature copied into an anchor row: the anchor note differs, so it
    does not verify."""
    ws = audit.workspace()
    await _grow(audit, ws, 3)
    ordinary = await _checkpoint(audit, ws)
    await _grow(audit, ws, 2)
    await audit.execute("DELETE FROM events WHERE workspace_id = :w AND seq <= 3", w=ws)
    await audit.execute(
        "UPDATE chains SET anchor_size = 3, anchor_head = :h WHERE workspace_id = :w",
        h=bytes.fromhex(ordinary.head),
        w=ws,
    )
    await audit.execute(
        "INSERT INTO anchors (workspace_id, size, head, purged_at, key_id, signature) "
        "SELECT workspace_id, size, head, signed_at, key_id, signature FROM checkpoints "
        "WHERE workspace_id = :w AND size = 3",
        w=ws,
    )
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(3, "bad_signature")]


async def test_a_purge_never_anchors_a_rebased_chain(audit_factory, database_url) -> None:
    async with audit_factory(database_url, retention_days=1) as audit:
        ws = audit.workspace()
        await _grow(audit, ws, 3)
        ordinary = await _checkpoint(audit, ws)
        await _grow(audit, ws, 2)
        await audit.execute("DELETE FROM events WHERE workspace_id = :w AND seq <= 3", w=ws)
        await audit.execute(
            "UPDATE chains SET anchor_size = 3, anchor_head = :h WHERE workspace_id = :w",
            h=bytes.fromhex(ordinary.head),
            w=ws,
        )
        audit.clock.advance(timedelta(days=2))
        assert await audit.server.purger.purge() == 0
        assert await audit.count("anchors") == 0
        assert [seq for seq, _ in await audit.chain(ws)] == [4, 5]  # the evidence stays
        assert (await verify(audit))[0] == 1


async def test_a_legitimate_purge_verifies_with_every_witness(audit_factory, database_url) -> None:
    async with audit_factory(database_url, retention_days=30) as audit:
        ws = audit.workspace()
        await _grow(audit, ws, 3)
        early = await _checkpoint(audit, ws)  # of events the purge removes
        audit.clock.advance(timedelta(days=31))
        await _grow(audit, ws, 2)
        assert await audit.server.purger.purge() == 3
        assert await audit.count("anchors") == 1
        await _grow(audit, ws, 1)
        late = await _checkpoint(audit, ws)
        saved = Path(audit.settings.data_dir) / "siem-checkpoints.jsonl"
        saved.write_text(_as_served(early) + "\n" + _as_served(late) + "\n")
        code, problems, output = await verify(audit, "--checkpoint", str(saved))
        assert (code, problems) == (0, []), output
        assert "witness: the latest checkpoint of 1 chain(s)" in output
        # The witness got the boundary's checkpoint too (on demand, retention, on demand).
        assert [line.get("size") for line in _witness_lines(audit)] == ["3", "3", "6"]


# Where a chain ends: a checkpoint kept outside the database.


async def test_a_tail_cut_off_with_its_checkpoints_is_caught_by_the_witness(audit) -> None:
    ws = audit.workspace()
    await _grow(audit, ws, 3)
    await _checkpoint(audit, ws)
    await _grow(audit, ws, 3)
    signed = await _checkpoint(audit, ws)
    assert signed.size == 6
    await _truncate(audit, ws, 3)
    code, problems, _ = await verify(audit, "--no-witness")
    assert (code, problems) == (0, [])  # the premise: the database alone is consistent
    code, problems, output = await verify(audit)
    assert code == 1, output
    assert [(p["workspace"], p["seq"], p["what"]) for p in problems] == [
        (ws, 6, "checkpoint_mismatch")
    ]
    assert "(witness file) is beyond the chain" in problems[0]["detail"]
    # Grown past the cut with other events: the witnessed head no longer matches at its size,
    # and the service signs nothing over them (a larger witnessed checkpoint would hide it).
    await _grow(audit, ws, 4)
    await audit.refused(_checkpoint(audit, ws), grpc.StatusCode.DATA_LOSS, "chain_integrity")
    assert await audit.server.checkpoints.sign_grown_chains() == 0
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(6, "checkpoint_mismatch")]
    assert [line.get("size") for line in _witness_lines(audit)] == ["3", "6"]


async def test_a_purge_never_moves_the_start_past_a_cut(audit_factory, database_url) -> None:
    async with audit_factory(database_url, retention_days=1) as audit:
        ws = audit.workspace()
        await _grow(audit, ws, 4)
        await _checkpoint(audit, ws)
        await _truncate(audit, ws, 2)
        await _grow(audit, ws, 4)  # 3..6, other events than the witnessed 3 and 4
        audit.clock.advance(timedelta(days=2))
        await _grow(audit, ws, 1)
        # Purging up to 6 would put the witnessed size 4 below the anchor, out of sight.
        assert await audit.server.purger.purge() == 0
        assert await audit.count("anchors") == 0
        code, problems, _ = await verify(audit)
        assert code == 1
        assert [(p["seq"], p["what"]) for p in problems] == [(4, "checkpoint_mismatch")]


async def test_a_tail_cut_off_is_caught_by_a_checkpoint_a_client_kept(audit, tmp_path) -> None:
    ws = audit.workspace()
    await _grow(audit, ws, 5)
    saved = tmp_path / "checkpoint.json"
    saved.write_text(_as_served(await _checkpoint(audit, ws)))
    code, problems, output = await verify(audit, "--no-witness", "--checkpoint", str(saved))
    assert (code, problems) == (0, []), output
    await _truncate(audit, ws, 2)
    code, problems, _ = await verify(audit, "--no-witness", "--checkpoint", str(saved))
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(5, "checkpoint_mismatch")]
    assert f"from {saved}" in problems[0]["detail"]
    code, problems, _ = await verify(
        audit, "--workspace", ws, "--no-witness", "--checkpoint", str(saved)
    )
    assert code == 1


async def test_a_chain_deleted_whole_is_caught_by_the_witness(audit) -> None:
    ws = audit.workspace()
    await _grow(audit, ws, 2)
    await _checkpoint(audit, ws)
    for table in ("events", "checkpoints", "chains"):
        await audit.execute(f"DELETE FROM {table} WHERE workspace_id = :w", w=ws)
    assert (await verify(audit, "--no-witness"))[0] == 0
    code, problems, _ = await verify(audit)
    assert code == 1
    assert [(p["workspace"], p["seq"], p["what"]) for p in problems] == [
        (ws, 2, "checkpoint_mismatch")
    ]


async def test_a_forged_or_altered_outside_checkpoint_is_refused(audit, tmp_path) -> None:
    ws = audit.workspace()
    await _grow(audit, ws, 3)
    served = json.loads(_as_served(await _checkpoint(audit, ws)))
    # Fields that say something else than the signed note: not a checkpoint at all.
    altered = tmp_path / "altered.json"
    altered.write_text(json.dumps({**served, "size": "2"}))
    code, _, output = await verify(audit, "--checkpoint", str(altered))
    assert code == 2
    assert "note does not match" in output
    # A consistent statement nobody signed: its signature fails.
    head_2 = (await _hash_at(audit, ws, 2)).hex()
    forged = tmp_path / "forged.json"
    note = served["note"].replace("\n3\n", "\n2\n").replace(served["head"], head_2)
    forged.write_text(json.dumps({**served, "size": "2", "head": head_2, "note": note}))
    code, problems, _ = await verify(audit, "--checkpoint", str(forged))
    assert code == 1
    assert [(p["seq"], p["what"]) for p in problems] == [(2, "bad_signature")]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**served, "workspaceId": audit.workspace()}))
    code, _, output = await verify(audit, "--workspace", ws, "--checkpoint", str(other))
    assert code == 2


async def test_the_witness_file_holds_every_signed_checkpoint(audit) -> None:
    ws, other = audit.workspace(), audit.workspace()
    await _grow(audit, ws, 2)
    first = await _checkpoint(audit, ws)
    assert await _checkpoint(audit, ws) == first  # unchanged: reused, not signed again
    await _grow(audit, ws, 1)
    await _grow(audit, other, 1)
    assert await audit.server.checkpoints.sign_grown_chains() == 2
    lines = _witness_lines(audit)
    assert lines[0] == json.loads(_as_served(first))
    assert sorted((line["workspaceId"], line["size"]) for line in lines) == sorted(
        [(ws, "2"), (ws, "3"), (other, "1")]
    )
    path = audit.settings.resolved_witness_file()
    # A crash mid-append leaves a torn line; the next append starts on a fresh line.
    with path.open("a") as file:
        file.write('{"workspaceId": "ws_')
    await _grow(audit, ws, 1)
    assert (await _checkpoint(audit, ws)).size == 4
    code, problems, output = await verify(audit)
    assert (code, problems) == (0, []), output
    assert "1 line(s)" in output
    assert "(line 4)" in output
    *_, torn, last = path.read_text().splitlines()
    assert torn == '{"workspaceId": "ws_'
    assert json.loads(last)["size"] == "4"


async def test_a_line_added_to_the_witness_neither_counts_nor_hides(audit) -> None:
    """A line nobody signed (someone with write access to the file) is reported, and does not
    displace the signed latest one: the cut below is still caught."""
    ws = audit.workspace()
    await _grow(audit, ws, 4)
    signed = json.loads(_as_served(await _checkpoint(audit, ws)))
    await _truncate(audit, ws, 2)
    head_2 = (await _hash_at(audit, ws, 2)).hex()
    note = signed["note"].replace("\n4\n", "\n9\n").replace(signed["head"], head_2)
    forged = {**signed, "size": "9", "head": head_2, "note": note}
    path = audit.settings.resolved_witness_file()
    with path.open("a") as file:
        file.write(json.dumps(forged) + "\n")
    code, problems, _ = await verify(audit)
    assert code == 1
    assert sorted((p["seq"], p["what"]) for p in problems) == [
        (4, "checkpoint_mismatch"),
        (9, "bad_signature"),
    ]


async def test_checkpoints_are_still_served_when_the_witness_cannot_be_written(
    audit_factory, database_url, tmp_path
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    async with audit_factory(database_url, witness_file=blocked / "witness.jsonl") as audit:
        ws = audit.workspace()
        await _grow(audit, ws, 1)
        assert (await _checkpoint(audit, ws)).size == 1
        failures = audit.server.registry.get_sample_value("palisade_audit_witness_failures_total")
        assert failures == 1
        code, _, output = await verify(audit)
        assert code == 0, output
        assert "no witness file" in output
