"""P7: audit ingest into Postgres, sustained.

Target (shared/PERFORMANCE.md): >= 20,000 events/s sustained; emitting an event adds one INSERT
to the caller's own transaction and no network hop (palisade.common.outbox.emit: that half is
structural, and measured here too as the INSERT's cost inside a transaction).

Real processes, as in production: crypto (Postgres), auth (Postgres; it answers audit's
workspace-directory questions) and audit (Postgres), each its own process. The load is what the
services' forwarders send: Ingest batches signed as service:auth, spread over WORKSPACES
workspaces, each event with an IP and a user agent (two PII fields encrypted under the person's
subject key: one Encrypt call of 2 x BATCH items per batch). Batches are built before the clock
starts; IN_FLIGHT of them are outstanding at any time. CPU seconds per 1,000 events are read
from /proc for audit, crypto and Postgres, for both batch sizes: Postgres both as the backends
serving audit's database (this run's own work) and as every postgres process on the machine
(which counts other sessions' work on a shared server too). The load generator is not counted.
P7_TRIALS and P7_SECONDS shorten a run (e.g. while profiling); the defaults are the benchmark.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import make_url

from bench.common import (
    POSTGRES_ADMIN_URL,
    crypto_and_auth,
    fresh_postgres_database,
    print_table,
    running_service,
)
from bench.cpu_budget import _postgres_cpu_seconds, _with_reaped_children
from bench.http_bench import cpu_seconds
from palisade.common.caller import AssertionSigner
from palisade.common.clock import SystemClock
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade_api.audit.v1 import audit_pb2 as pb
from palisade_api.audit.v1 import audit_pb2_grpc
from palisade_api.auth.v1 import auth_pb2, auth_pb2_grpc

WORKSPACES = 16
BATCH = 500  # events per Ingest call (the forwarders' AUDIT_BATCH_SIZE, default 100, up to 1000)
SMALL_BATCH = 100  # the forwarders' default, measured too
IN_FLIGHT = 6
SECONDS_PER_TRIAL = float(os.environ.get("P7_SECONDS", "20"))
TRIALS = int(os.environ.get("P7_TRIALS", "3"))
TARGET = 20_000
INGEST = "/palisade.audit.v1.AuditService/Ingest"
AGENT = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)


def _workspaces(auth_port: int, data_dir: Path) -> list[tuple[str, str]]:
    """(workspace id, owner user id) of WORKSPACES fresh sign-ups, as the gateway asks for them."""
    keys = KeySource.from_master(read_document(data_dir / "keys" / "edges.json"), "gateway")
    signer = AssertionSigner(keys=keys, clock=SystemClock(), ttl_seconds=60)

    async def sign_up() -> list[tuple[str, str]]:
        created = []
        async with insecure_channel(f"127.0.0.1:{auth_port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            for i in range(WORKSPACES):
                token = signer.sign(
                    audience="auth",
                    method="/palisade.auth.v1.AuthService/SignUp",
                    principal="anonymous",
                    request_id=uuid.uuid4().hex,
                    client_ip="127.0.0.1",
                )
                answer = await stub.SignUp(
                    auth_pb2.SignUpRequest(
                        email=f"bench-{i}-{uuid.uuid4().hex[:8]}@example.com",
                        password="correct horse battery staple",
                        name="Bench",
                    ),
                    metadata=(("x-palisade-caller", token),),
                )
                created.append((answer.workspace_id, answer.user_id))
        return created

    return asyncio.run(sign_up())


def _batches(
    count: int, workspaces: list[tuple[str, str]], size: int = BATCH
) -> list[pb.IngestRequest]:
    now = Timestamp()
    now.FromDatetime(datetime.now(UTC))
    batches = []
    for b in range(count):
        events = []
        for i in range(size):
            workspace, user = workspaces[(b * size + i) % len(workspaces)]
            events.append(
                pb.IngestEvent(
                    event_id=uuid.uuid4().hex,
                    type="session.login_succeeded",
                    occurred_at=now,
                    workspace_id=workspace,
                    actor=f"user:{user}",
                    subject=user,
                    ip=f"198.51.{(i >> 8) & 255}.{i & 255}",
                    user_agent=AGENT,
                    outcome="success",
                    details={"method": "password", "session_id": f"ses_{uuid.uuid4().hex}"},
                )
            )
        batches.append(pb.IngestRequest(events=events))
    return batches


async def _trial(
    audit_port: int, identity: ServiceIdentity, batches: list[pb.IngestRequest]
) -> tuple[float, int]:
    """(events/s, events stored) sending every batch with IN_FLIGHT outstanding."""
    queue = list(reversed(batches))
    stored = retried = 0
    async with insecure_channel(f"127.0.0.1:{audit_port}") as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)

        async def sender() -> None:
            nonlocal stored, retried
            while queue:
                request = queue.pop()
                while True:
                    try:
                        reply = await stub.Ingest(
                            request, metadata=identity.metadata("audit", INGEST), timeout=60
                        )
                        break
                    except grpc.aio.AioRpcError as error:
                        # What a forwarder does with UNAVAILABLE (a dependency was too slow):
                        # send the same batch again; duplicates are not stored twice.
                        if error.code() != grpc.StatusCode.UNAVAILABLE:
                            raise
                        retried += 1
                stored += reply.stored

        start = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(IN_FLIGHT)))
        elapsed = time.perf_counter() - start
    if retried:
        print(f"P7: {retried} batch(es) answered UNAVAILABLE and were sent again")
    return stored / elapsed, stored


def _backend_pids(database: str) -> set[int]:
    """The Postgres backends connected to one database now (audit's pool keeps its own open)."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)
        ).fetchall()
    return {int(r[0]) for r in rows}


class _Cpu:
    """CPU seconds per 1,000 events of audit, crypto, audit's Postgres backends, every postgres
    process and this load generator (in that order), sampled around a trial."""

    def __init__(self, audit: int, crypto: int, audit_database: str) -> None:
        self._audit, self._crypto, self._database = audit, crypto, audit_database

    def _sample(self) -> list[float]:
        return [
            cpu_seconds(self._audit) or 0.0,
            cpu_seconds(self._crypto) or 0.0,
            _postgres_cpu_seconds(),
            time.process_time(),
        ]

    def per_1000(self, run: Callable[[], tuple[float, int]]) -> tuple[float, list[float]]:
        """(events/s, CPU seconds per 1,000 events) of one trial."""
        backends = {pid: _with_reaped_children(pid) for pid in _backend_pids(self._database)}
        before = self._sample()
        rate, stored = run()
        after = self._sample()
        # A backend opened during the trial (the pool grew) counts from its start.
        audit_pg = sum(
            _with_reaped_children(pid) - backends.get(pid, 0.0)
            for pid in backends.keys() | _backend_pids(self._database)
        )
        spent = [a - b for a, b in zip(after, before, strict=True)]
        spent.insert(2, audit_pg)
        return rate, [c / stored * 1000 for c in spent]


def _emit_cost() -> float:
    """Microseconds one outbox INSERT adds to a caller's transaction (Postgres)."""
    from sqlalchemy import MetaData

    from palisade.common.db import create_engine
    from palisade.common.outbox import SecurityEvent, emit, outbox_table

    async def measure(url: str) -> float:
        engine = create_engine(url)
        metadata = MetaData()
        table = outbox_table(metadata)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        rounds = 2000
        async with engine.begin() as conn:
            start = time.perf_counter()
            for _ in range(rounds):
                await emit(
                    conn,
                    table,
                    SecurityEvent(
                        type="session.login_succeeded",
                        occurred_at=datetime.now(UTC),
                        actor="user:usr_x",
                        ip="198.51.100.7",
                        device="Chrome 120 on Mac OS X",
                    ),
                )
            elapsed = time.perf_counter() - start
        await engine.dispose()
        return elapsed / rounds * 1e6

    with fresh_postgres_database() as url:
        return asyncio.run(measure(url))


def main() -> dict[str, float]:
    emit_us = _emit_cost()
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        data_dir = Path(tmp)
        audit_db = stack.enter_context(fresh_postgres_database())
        crypto, auth = crypto_and_auth(
            stack,
            data_dir,
            {
                # Auth's own events are not part of this measurement.
                "PALISADE_AUTH_AUDIT_TARGET": "127.0.0.1:9",
                "PALISADE_AUTH_LOG_LEVEL": "ERROR",
            },
        )
        audit = stack.enter_context(
            running_service(
                "palisade.audit",
                "PALISADE_AUDIT_",
                data_dir,
                {
                    "PALISADE_AUDIT_DATABASE_URL": audit_db,
                    "PALISADE_AUDIT_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
                    "PALISADE_AUDIT_AUTH_TARGET": f"127.0.0.1:{auth.port}",
                },
            )
        )
        workspaces = _workspaces(auth.port, data_dir)
        keys = KeySource.from_master(read_document(data_dir / "keys" / "edges.json"), "auth")
        identity = ServiceIdentity(
            name="auth", signer=AssertionSigner(keys=keys, clock=SystemClock(), ttl_seconds=60)
        )
        asyncio.run(_trial(audit.port, identity, _batches(IN_FLIGHT * 2, workspaces)))  # warm-up
        per_trial = int(SECONDS_PER_TRIAL * TARGET / BATCH)
        meter = _Cpu(audit.pid, crypto.pid, make_url(audit_db).database or "")
        # Both batch sizes in every trial, one after the other, so both see the same machine.
        trials: dict[int, list[tuple[float, list[float]]]] = {BATCH: [], SMALL_BATCH: []}
        for _ in range(TRIALS):
            for size, count in (
                (BATCH, per_trial),
                (SMALL_BATCH, per_trial * BATCH // SMALL_BATCH // 2),
            ):
                batches = _batches(count, workspaces, size)

                def run(batches: list[pb.IngestRequest] = batches) -> tuple[float, int]:
                    return asyncio.run(_trial(audit.port, identity, batches))

                trials[size].append(meter.per_1000(run))
    cores = os.cpu_count() or 1
    columns: dict[int, list[str]] = {}
    medians: dict[int, float] = {}
    for size, results in trials.items():
        medians[size] = statistics.median(rate for rate, _ in results)
        audit_cpu, crypto_cpu, pg_own, pg_all, load_cpu = (
            statistics.median(c[i] for _, c in results) for i in range(5)
        )
        columns[size] = [
            f"{medians[size]:,.0f}",
            " ".join(f"{rate:,.0f}" for rate, _ in results),
            f"{audit_cpu:.3f}",
            f"{crypto_cpu:.3f}",
            f"{pg_own:.3f}",
            f"{pg_all:.3f}",
            f"{load_cpu:.3f}",
            f"{cores / ((audit_cpu + crypto_cpu + pg_own) / 1000):,.0f}",
        ]
    names = [
        f"events/s, median (target >= {TARGET:,})",
        "events/s, each trial",
        "CPU s per 1,000 events: audit",
        "CPU s per 1,000 events: crypto",
        "CPU s per 1,000 events: postgres (audit's backends)",
        "CPU s per 1,000 events: postgres (every process on the machine)",
        "CPU s per 1,000 events: this load generator",
        f"ceiling from CPU alone: {cores} cores / (audit + crypto + audit's postgres)",
    ]
    rows = [("", f"{f'{BATCH}-event batches':>24}  {f'{SMALL_BATCH}-event batches':>24}")]
    rows += [
        (name, f"{big:>24}  {small:>24}")
        for name, big, small in zip(names, columns[BATCH], columns[SMALL_BATCH], strict=True)
    ]
    rows.append(
        (
            "emitting: one outbox INSERT in the caller's transaction",
            f"{emit_us:.0f} us, no network hop",
        )
    )
    print_table(
        f"P7  audit ingest into Postgres ({IN_FLIGHT} in flight, {WORKSPACES} workspaces, "
        f"{TRIALS} trials of ~{per_trial * BATCH:,} events in {BATCH}-event batches and half "
        f"as many in {SMALL_BATCH}-event ones)",
        rows,
    )
    median = medians[BATCH]
    return {"p7_events_per_s": median}


if __name__ == "__main__":
    main()
