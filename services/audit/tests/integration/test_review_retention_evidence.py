"""Review (issue 13): a retention purge must not destroy the evidence of tampering.

A purge used to verify only the part of the prefix after its latest checkpoint before deleting
it, so a row edited *before* that checkpoint (content changed, hashes left alone: `palisade-audit
verify` says "edited") was purged without a look, the new retention anchor signed, and verify
passed from then on: the purge laundered the edit. It now verifies the whole prefix from the
anchor against every checkpoint in it. test_a_purge_refuses_a_tampered_prefix covers a chain
that had no checkpoint yet.
"""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta

from palisade.audit.cli import main
from palisade_api.audit.v1 import audit_pb2 as pb

from .audit_support import event, user_id


def _cli(audit, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), settings=audit.settings, out=out, clock=audit.clock)
    return code, out.getvalue()


async def cli(audit, *argv: str) -> tuple[int, str]:
    return await asyncio.to_thread(_cli, audit, *argv)


async def test_a_purge_refuses_a_prefix_edited_before_its_checkpoint(
    audit_factory, sqlite_url
) -> None:
    async with audit_factory(sqlite_url, retention_days=1) as audit:
        ws = audit.workspace()
        await audit.ingest(*(event(workspace=ws) for _ in range(3)))
        signed = await audit.stub.GetCheckpoint(
            pb.GetCheckpointRequest(), metadata=audit.person(user_id(), ws)
        )
        assert signed.size == 3
        await audit.execute(
            "UPDATE events SET reason = 'x' WHERE workspace_id = :w AND seq = 2", w=ws
        )
        code, output = await cli(audit, "verify")
        assert code == 1
        assert "edited" in output  # the premise: the tampering is detectable now
        audit.clock.advance(timedelta(days=2))
        await audit.ingest(event(workspace=ws, occurred_at=audit.clock.now()))
        purged = await audit.server.purger.purge()
        assert purged == 0, "the tampered prefix was purged"
        assert len(await audit.chain(ws)) == 4  # the evidence stays
