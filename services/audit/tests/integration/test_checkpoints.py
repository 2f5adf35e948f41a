"""Signed checkpoints: on demand and periodic, verifiable offline, never over a tampered chain."""

from __future__ import annotations

import asyncio
import base64
import io
import stat

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from palisade.audit.cli import main
from palisade_api.audit.v1 import audit_pb2 as pb

from .audit_support import event, user_id

ZEROS = "0" * 64


async def _checkpoint(audit, ws: str, role: str = "owner") -> pb.Checkpoint:
    return await audit.stub.GetCheckpoint(
        pb.GetCheckpointRequest(), metadata=audit.person(user_id(), ws, role=role)
    )


async def _keys(audit) -> pb.ListSigningKeysResponse:
    return await audit.stub.ListSigningKeys(pb.ListSigningKeysRequest(), metadata=audit.anonymous())


def _independently_valid(checkpoint: pb.Checkpoint, keys: pb.ListSigningKeysResponse) -> bool:
    """Checked with the cryptography library from the published fields alone: the note is
    rebuilt from workspaceId, size, head and signedAt, and the signature checked over it."""
    [key] = [k for k in keys.keys if k.key_id == checkpoint.key_id]
    rebuilt = (
        f"palisade-audit-checkpoint/v1\n{checkpoint.workspace_id}\n{checkpoint.size}\n"
        f"{checkpoint.head}\n{checkpoint.signed_at.ToDatetime().strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
    )
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key.public_key))
    try:
        public.verify(base64.b64decode(checkpoint.signature), rebuilt.encode())
    except Exception:
        return False
    return True


async def test_an_empty_chain_has_a_signed_checkpoint(audit) -> None:
    ws = audit.workspace()
    checkpoint = await _checkpoint(audit, ws)
    assert (checkpoint.workspace_id, checkpoint.size, checkpoint.head) == (ws, 0, ZEROS)
    assert _independently_valid(checkpoint, await _keys(audit))


async def test_a_checkpoint_covers_the_head_and_is_reused_until_the_chain_grows(audit) -> None:
    ws = audit.workspace()
    await audit.ingest(*(event(workspace=ws) for _ in range(3)))
    first = await _checkpoint(audit, ws)
    assert first.size == 3
    assert first.head != ZEROS
    audit.clock.advance(5)
    assert await _checkpoint(audit, ws) == first
    await audit.ingest(event(workspace=ws))
    second = await _checkpoint(audit, ws)
    assert second.size == 4
    assert second.signed_at.seconds > first.signed_at.seconds
    keys = await _keys(audit)
    assert _independently_valid(first, keys)
    assert _independently_valid(second, keys)
    tampered = pb.Checkpoint()
    tampered.CopyFrom(second)
    tampered.size = 5
    assert not _independently_valid(tampered, keys)
    assert second.note.split("\n")[1:4] == [ws, "4", second.head]


async def test_only_owners_and_admins_get_checkpoints(audit) -> None:
    ws = audit.workspace()
    assert (await _checkpoint(audit, ws, role="admin")).workspace_id == ws
    await audit.refused(
        _checkpoint(audit, ws, role="member"),
        grpc.StatusCode.PERMISSION_DENIED,
        "permission_denied",
    )
    await audit.refused(
        audit.stub.GetCheckpoint(pb.GetCheckpointRequest(), metadata=audit.anonymous()),
        grpc.StatusCode.UNAUTHENTICATED,
        "unauthenticated",
    )


async def test_no_checkpoint_is_signed_over_a_tampered_chain(audit) -> None:
    ws = audit.workspace()
    await audit.ingest(*(event(workspace=ws) for _ in range(3)))
    await _checkpoint(audit, ws)
    await audit.ingest(*(event(workspace=ws) for _ in range(3)))
    await audit.execute(
        "UPDATE events SET reason = 'hidden' WHERE workspace_id = :w AND seq = 5", w=ws
    )
    await audit.refused(_checkpoint(audit, ws), grpc.StatusCode.DATA_LOSS, "chain_integrity")
    assert await audit.server.checkpoints.sign_grown_chains() == 0
    failures = audit.server.registry.get_sample_value(
        "palisade_audit_verify_failures_total", {"what": "edited"}
    )
    assert failures == 2


async def test_the_periodic_pass_signs_every_grown_chain(audit) -> None:
    a, b, c = audit.workspace(), audit.workspace(), audit.workspace()
    await audit.ingest(event(workspace=a), event(workspace=b), event(workspace=b))
    await audit.ingest(event(type="session.login_failed", outcome="failure"))  # system chain
    assert await audit.server.checkpoints.sign_grown_chains() == 3
    assert await audit.server.checkpoints.sign_grown_chains() == 0
    await audit.ingest(event(workspace=c))
    assert await audit.server.checkpoints.sign_grown_chains() == 1
    assert await audit.count("checkpoints") == 4
    signed = audit.server.registry.get_sample_value(
        "palisade_audit_checkpoints_signed_total", {"kind": "periodic"}
    )
    assert signed == 4


async def test_rotation_keeps_earlier_public_keys(audit) -> None:
    ws = audit.workspace()
    await audit.ingest(event(workspace=ws))
    before = await _checkpoint(audit, ws)
    out = io.StringIO()
    code = await asyncio.to_thread(
        main, ["keys", "rotate"], settings=audit.settings, out=out, clock=audit.clock
    )
    assert code == 0
    await audit.ingest(event(workspace=ws))
    after = await _checkpoint(audit, ws)
    assert after.key_id != before.key_id
    keys = await _keys(audit)
    assert {k.key_id for k in keys.keys} == {before.key_id, after.key_id}
    assert _independently_valid(before, keys)
    assert _independently_valid(after, keys)
    code = await asyncio.to_thread(
        main, ["verify"], settings=audit.settings, out=io.StringIO(), clock=audit.clock
    )
    assert code == 0


async def test_the_signing_key_lives_outside_the_database(audit) -> None:
    path = audit.settings.resolved_signing_key_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    private = path.read_text()
    async with audit.server.engine.connect() as conn:
        from sqlalchemy import text

        await audit.ingest(event(workspace=(ws := audit.workspace())))
        await _checkpoint(audit, ws)
        rows = (await conn.execute(text("SELECT * FROM checkpoints"))).all()
    assert rows
    import json

    seed = next(k["private_key"] for k in json.loads(private)["keys"] if "private_key" in k)
    assert seed not in repr(rows)
    assert base64.b64decode(seed) not in b"".join(
        bytes(v) for row in rows for v in row if isinstance(v, bytes | memoryview)
    )


@pytest.mark.parametrize("role", ["owner"])
async def test_checkpoints_of_other_workspaces_are_separate(audit, role) -> None:
    a, b = audit.workspace(), audit.workspace()
    await audit.ingest(event(workspace=a), event(workspace=a), event(workspace=b))
    assert (await _checkpoint(audit, a, role)).size == 2
    assert (await _checkpoint(audit, b, role)).size == 1


async def test_one_replica_at_a_time_runs_the_periodic_passes(audit_pg) -> None:
    from palisade.audit.passes import one_replica_at_a_time

    engine = audit_pg.server.engine
    inside = asyncio.Event()
    release = asyncio.Event()

    async def long_pass() -> None:
        inside.set()
        await release.wait()

    first = asyncio.create_task(one_replica_at_a_time(engine, 42, long_pass))
    await inside.wait()
    ran: list[int] = []

    async def other_pass() -> None:
        ran.append(1)

    assert await one_replica_at_a_time(engine, 42, other_pass) is False  # another holds it
    release.set()
    assert await first is True
    assert await one_replica_at_a_time(engine, 42, other_pass) is True
    assert ran == [1]
