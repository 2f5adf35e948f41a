"""Key rotation on real rows, with the operator's commands: `palisade-crypto keys rotate`, the
rewrap job (`palisade-visitors rewrap`), `keys retire`, and the same for the index key with
`palisade-visitors reindex`. Crypto is a real server; the CLIs run as subprocess / in a thread."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from prometheus_client import CollectorRegistry

from palisade.common.crypto_client import CryptoFailure
from palisade.visitors.cli import main
from palisade.visitors.maintenance import KeyMaintenance
from palisade.visitors.metrics import VisitorsMetrics
from palisade.visitors.pii import field_aad, subject_of
from palisade.visitors.store import VisitorStore
from palisade_api.visitors.v1 import visitors_pb2 as pb

from .conftest import new_workspace


async def _visitors_cli(harness, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await asyncio.to_thread(
        main, list(args), settings=harness.settings, out=out, clock=harness.clock
    )
    return code, out.getvalue()


async def _ok(harness, *args: str) -> None:
    done = await asyncio.to_thread(harness.crypto_cli, *args)
    assert done.returncode == 0, done.stderr


async def _read_all(harness, ws: str, ids: list[str]) -> list[str]:
    names = []
    for visitor_id in ids:
        got = await harness.stub.GetVisitor(
            pb.GetVisitorRequest(id=visitor_id), metadata=harness.person(ws)
        )
        names.append(got.name)
    return names


async def test_rotate_rewrap_retire_and_every_visitor_still_reads(harness) -> None:
    ws = new_workspace()
    old = [
        (await harness.create(harness.person(ws), name=f"Old {n}", email=f"old{n}@example.com")).id
        for n in range(3)
    ]
    old_envelope = (await harness.row(old[0])).name_ct
    await _ok(harness, "keys", "rotate")
    await harness.until_crypto(lambda c: c.keyring.current.data.primary == 2)
    new = (await harness.create(harness.person(ws), name="New", phone="+4915112345678")).id
    assert (await harness.row(new)).data_key_version == 2
    assert (await harness.row(old[0])).data_key_version == 1
    assert await _read_all(harness, ws, [*old, new]) == ["Old 0", "Old 1", "Old 2", "New"]
    code, out = await _visitors_cli(harness, "key-versions")
    assert code == 0
    assert json.loads(out)["rows_by_data_key_version"] == {"1": 3, "2": 1}

    code, out = await _visitors_cli(harness, "rewrap")
    assert code == 0, out
    assert json.loads(out) == {
        "job": "rewrap",
        "target_version": 2,
        "moved": 3,
        "erasures_finished": 0,
        "failed": 0,
    }
    code, out = await _visitors_cli(harness, "key-versions")
    assert json.loads(out)["rows_by_data_key_version"] == {"2": 4}
    assert (await harness.row(old[0])).name_ct != old_envelope

    await _ok(harness, "keys", "retire", "--below", "2")
    await harness.until_crypto(lambda c: c.keyring.current.data.min_version == 2)
    assert await _read_all(harness, ws, [*old, new]) == ["Old 0", "Old 1", "Old 2", "New"]
    found = await harness.stub.FindVisitors(
        pb.FindVisitorsRequest(email="OLD1@example.com"), metadata=harness.person(ws)
    )
    assert [v.id for v in found.visitors] == [old[1]]
    # The pre-rewrap copy is under a retired version now.
    with pytest.raises(CryptoFailure):
        await harness.server.crypto.decrypt([(old_envelope, field_aad(ws, old[0], "name"))])
    # Nothing left to do: a second run moves nothing.
    code, out = await _visitors_cli(harness, "rewrap")
    assert json.loads(out)["moved"] == 0


def _job(harness, *, sleep, batch_rows: int = 2, rows_per_second: float = 1e6) -> KeyMaintenance:
    return KeyMaintenance(
        store=VisitorStore(engine=harness.server.engine),
        crypto=harness.server.crypto,
        clock=harness.clock,
        metrics=VisitorsMetrics(CollectorRegistry()),
        batch_rows=batch_rows,
        rows_per_second=rows_per_second,
        sleep=sleep,
    )


class Stopped(Exception):
    pass


async def test_the_rewrap_job_resumes_where_it_stopped_and_is_paced(harness) -> None:
    ws = new_workspace()
    ids = [(await harness.create(harness.person(ws), name=f"V{n}")).id for n in range(5)]
    await _ok(harness, "keys", "rotate")
    await harness.until_crypto(lambda c: c.keyring.current.data.primary == 2)

    slept: list[float] = []

    async def stop_at_the_first_pause(seconds: float) -> None:
        slept.append(seconds)
        raise Stopped()  # the process dies mid-walk

    with pytest.raises(Stopped):
        await _job(harness, sleep=stop_at_the_first_pause, rows_per_second=1).rewrap()
    assert slept
    assert 1.0 < slept[0] <= 2.0  # 2 rows at 1 row/s
    versions = [(await harness.row(i)).data_key_version for i in sorted(ids)]
    assert versions == [2, 2, 1, 1, 1]

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    registry_job = _job(harness, sleep=no_wait)
    result = await registry_job.rewrap()
    assert result.moved == 3  # carried on after the first two
    assert {(await harness.row(i)).data_key_version for i in ids} == {2}
    metrics = registry_job._metrics
    assert metrics.rows_rewrapped._value.get() == 3
    assert metrics.rows_by_data_key_version.labels("2")._value.get() == 5


async def test_the_rewrap_job_finishes_an_interrupted_erasure(harness) -> None:
    ws = new_workspace()
    keep = (await harness.create(harness.person(ws), name="Keep")).id
    gone = (await harness.create(harness.person(ws), name="Gone")).id
    await _ok(harness, "keys", "rotate")
    await harness.until_crypto(lambda c: c.keyring.current.data.primary == 2)
    assert await harness.server.crypto.shred_subject(subject_of(gone))

    async def no_wait(seconds: float) -> None:
        return None

    result = await _job(harness, sleep=no_wait).rewrap()
    assert (result.moved, result.erased, result.failed) == (1, 1, 0)
    assert (await harness.row(keep)).data_key_version == 2
    erased = await harness.row(gone)
    assert erased.erased_at is not None
    assert erased.name_ct is None
    [event] = await harness.events("visitor.erased")
    assert json.loads(event.payload)["actor"] == "service:visitors"


async def test_the_jobs_leave_a_planted_erased_envelope_in_place(harness) -> None:
    ws = new_workspace()
    ada = (await harness.create(harness.person(ws), name="Ada", email="ada@example.com")).id
    bob = (await harness.create(harness.person(ws), name="Bob", email="bob@example.com")).id
    planted = (await harness.row(ada)).email_ct
    await harness.stub.EraseVisitor(pb.EraseVisitorRequest(id=ada), metadata=harness.person(ws))
    await harness.execute("UPDATE visitors SET email_ct = :ct WHERE id = :id", ct=planted, id=bob)
    await _ok(harness, "keys", "rotate")
    await _ok(harness, "keys", "rotate", "--index")
    await harness.until_crypto(lambda c: c.keyring.current.index.primary == 2)

    async def no_wait(seconds: float) -> None:
        return None

    for run in (_job(harness, sleep=no_wait).rewrap, _job(harness, sleep=no_wait).reindex):
        result = await run()
        assert (result.moved, result.erased, result.failed) == (0, 0, 1)
    row = await harness.row(bob)
    assert row.erased_at is None
    assert row.name_ct is not None
    assert len(await harness.events("visitor.erased")) == 1  # Ada's


async def test_reindex_finishes_an_interrupted_erasure(harness) -> None:
    ws = new_workspace()
    keep = (await harness.create(harness.person(ws), email="keep@example.com")).id
    gone = (await harness.create(harness.person(ws), email="gone@example.com")).id
    await _ok(harness, "keys", "rotate", "--index")
    await harness.until_crypto(lambda c: c.keyring.current.index.primary == 2)
    assert await harness.server.crypto.shred_subject(subject_of(gone))
    harness.clock.advance(3600)

    async def no_wait(seconds: float) -> None:
        return None

    result = await _job(harness, sleep=no_wait).reindex()
    assert (result.moved, result.erased, result.failed) == (1, 1, 0)
    assert (await harness.row(keep)).index_key_version == 2
    row = await harness.row(gone)
    assert row.erased_at is not None
    assert row.email_index is None
    assert await VisitorStore(engine=harness.server.engine).index_versions_in_use() == [2]
    await _ok(harness, "keys", "retire", "--index", "--below", "2")


async def test_index_rotation_reindex_and_retire(harness) -> None:
    ws = new_workspace()
    old = (
        await harness.create(harness.person(ws), email="Old@Example.com", phone="+4915100000001")
    ).id
    assert (await harness.row(old)).index_key_version == 1
    await _ok(harness, "keys", "rotate", "--index")
    await harness.until_crypto(lambda c: c.keyring.current.index.primary == 2)
    new = (await harness.create(harness.person(ws), email="old@example.com")).id
    assert (await harness.row(new)).index_key_version == 2
    # Both index versions are searched until the rows move.
    found = await harness.stub.FindVisitors(
        pb.FindVisitorsRequest(email="OLD@example.com"), metadata=harness.person(ws)
    )
    assert {v.id for v in found.visitors} == {old, new}
    refused = await asyncio.to_thread(
        harness.crypto_cli, "keys", "retire", "--index", "--below", "2"
    )
    assert refused.returncode == 3  # visitors has not reported yet
    # Crypto counts a report only once the new version has fully taken over (every replica
    # indexes with it): the operator runs reindex after that grace.
    harness.clock.advance(3600)

    code, out = await _visitors_cli(harness, "reindex")
    assert code == 0, out
    assert json.loads(out)["moved"] == 1
    row = await harness.row(old)
    assert row.index_key_version == 2
    assert row.email_index.startswith("bi1.2.")
    assert row.phone_index.startswith("bi1.2.")
    code, out = await _visitors_cli(harness, "key-versions")
    assert json.loads(out)["index_key_versions_in_use"] == [2]

    await _ok(harness, "keys", "retire", "--index", "--below", "2")
    await harness.until_crypto(lambda c: c.keyring.current.index.min_version == 2)
    for request in (
        pb.FindVisitorsRequest(email="old@EXAMPLE.com"),
        pb.FindVisitorsRequest(phone="+49 151 00000001"),
    ):
        found = await harness.stub.FindVisitors(request, metadata=harness.person(ws))
        assert old in {v.id for v in found.visitors}


async def test_the_background_job_moves_rows_after_a_rotation(visitors_factory, sqlite_url) -> None:
    overrides = {"rewrap_poll_seconds": 0.05}
    async with visitors_factory(sqlite_url, **overrides) as harness:
        ws = new_workspace()
        ids = [(await harness.create(harness.person(ws), name=f"V{n}")).id for n in range(3)]
        await _ok(harness, "keys", "rotate")
        await harness.until_crypto(lambda c: c.keyring.current.data.primary == 2)
        registry = harness.server.registry
        gauge = "palisade_visitors_rows_by_data_key_version"
        async with harness.server.maintenance.running(), asyncio.timeout(20):
            while True:  # the job's own task, on its own timer; the gauge is set last
                if registry.get_sample_value(gauge, {"version": "2"}) == 3:
                    break
                await asyncio.sleep(0.05)
        assert {(await harness.row(i)).data_key_version for i in ids} == {2}
        assert registry.get_sample_value("palisade_visitors_rows_rewrapped_total") == 3
        assert registry.get_sample_value(gauge, {"version": "1"}) is None
