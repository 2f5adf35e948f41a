"""Review findings (issue 14): key rotation on real rows. Both fixed: visitors reports its data
key versions (ReportDataVersions) and crypto's data-key retire refuses below a reported one;
a lone unreadable row in a rewrap batch is counted as failed.

1. `palisade-crypto keys retire --below N` (data keys) checks only that no subject secret is
   still wrapped below N; it knows nothing of the envelopes the visitors table holds under the old
   version. Run before the rewrap job has moved every row (the step order is only written down),
   it succeeds, and every visitor not yet moved stops reading (INTERNAL), with no way for the
   rewrap job to move them any more. The index key has the guard this lacks (visitors report the
   index versions in use; `retire --index` is refused, exit 3, until none is left below N).
2. KeyMaintenance._rewrap_rows re-raises a crypto refusal when the batch holds one row: a
   tampered (or otherwise unreadable) row that ends up alone in a batch (the last one of a walk,
   or every one with rewrap_batch_rows=1) aborts the whole pass, every pass, instead of being
   counted as failed and left in place as it is in a batch of two. The walk then never completes:
   the cursor is never reset and the rows-per-version gauge is never refreshed.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from palisade.visitors.maintenance import KeyMaintenance
from palisade.visitors.metrics import VisitorsMetrics
from palisade.visitors.store import VisitorStore
from palisade_api.visitors.v1 import visitors_pb2 as pb

from .conftest import new_workspace


async def _no_wait(seconds: float) -> None:
    return None


def _job(harness, *, batch_rows: int) -> KeyMaintenance:
    return KeyMaintenance(
        store=VisitorStore(engine=harness.server.engine),
        crypto=harness.server.crypto,
        clock=harness.clock,
        metrics=VisitorsMetrics(CollectorRegistry()),
        batch_rows=batch_rows,
        rows_per_second=1e6,
        sleep=_no_wait,
    )


async def _rotate(harness) -> None:
    done = await asyncio.to_thread(harness.crypto_cli, "keys", "rotate")
    assert done.returncode == 0, done.stderr
    await harness.until_crypto(lambda c: c.keyring.current.data.primary == 2)


async def test_review_retiring_a_data_key_before_the_rewrap_is_refused(harness) -> None:
    ws = new_workspace()
    old = (await harness.create(harness.person(ws), name="Old")).id
    await _rotate(harness)
    retired = await asyncio.to_thread(harness.crypto_cli, "keys", "retire", "--below", "2")
    # Refused, naming the service whose rows still use v1; nothing retired.
    assert retired.returncode == 3, retired.stdout
    assert "'visitors'" in retired.stderr
    assert "v1" in retired.stderr
    got = await harness.stub.GetVisitor(pb.GetVisitorRequest(id=old), metadata=harness.person(ws))
    assert got.name == "Old"
    # After the rewrap walk (which reports v2 only) the retire goes ahead, and the visitor reads.
    result = await _job(harness, batch_rows=10).rewrap()
    assert result.moved == 1
    retired = await asyncio.to_thread(harness.crypto_cli, "keys", "retire", "--below", "2")
    assert retired.returncode == 0, retired.stderr
    await harness.until_crypto(lambda c: c.keyring.current.data.min_version == 2)
    got = await harness.stub.GetVisitor(pb.GetVisitorRequest(id=old), metadata=harness.person(ws))
    assert got.name == "Old"


async def test_review_a_row_the_walk_could_not_move_keeps_the_retire_refused(harness) -> None:
    ws = new_workspace()
    ids = [(await harness.create(harness.person(ws), name=f"V{n}")).id for n in range(2)]
    await _rotate(harness)
    envelope = bytearray((await harness.row(ids[0])).name_ct)
    envelope[-1] ^= 1
    await harness.execute(
        "UPDATE visitors SET name_ct = :ct WHERE id = :id", ct=bytes(envelope), id=ids[0]
    )
    result = await _job(harness, batch_rows=10).rewrap()
    assert (result.moved, result.failed) == (1, 1)
    retired = await asyncio.to_thread(harness.crypto_cli, "keys", "retire", "--below", "2")
    assert retired.returncode == 3
    assert "'visitors'" in retired.stderr


async def test_review_an_unreadable_row_alone_in_a_batch_is_counted_not_fatal(harness) -> None:
    ws = new_workspace()
    ids = [(await harness.create(harness.person(ws), name=f"V{n}")).id for n in range(3)]
    await _rotate(harness)
    bad = max(ids)  # the walk goes in id order: the last one is alone in the second batch
    envelope = bytearray((await harness.row(bad)).name_ct)
    envelope[-1] ^= 1
    await harness.execute(
        "UPDATE visitors SET name_ct = :ct WHERE id = :id", ct=bytes(envelope), id=bad
    )

    result = await _job(harness, batch_rows=2).rewrap()
    assert (result.moved, result.failed) == (2, 1)
    assert (await harness.row(bad)).data_key_version == 1


async def test_review_with_batches_of_one_every_unreadable_row_is_counted(harness) -> None:
    ws = new_workspace()
    ids = [(await harness.create(harness.person(ws), name=f"V{n}")).id for n in range(3)]
    await _rotate(harness)
    bad = ids[1]
    envelope = bytearray((await harness.row(bad)).name_ct)
    envelope[-1] ^= 1
    await harness.execute(
        "UPDATE visitors SET name_ct = :ct WHERE id = :id", ct=bytes(envelope), id=bad
    )
    job = _job(harness, batch_rows=1)
    result = await job.rewrap()
    assert (result.moved, result.failed) == (2, 1)
    # The walk completed: its cursor is back at the start, so the next pass retries only it.
    again = await job.rewrap()
    assert (again.moved, again.failed) == (0, 1)
