"""P12: webhook delivery to a local receiver.

Target (shared/PERFORMANCE.md): >= 500 deliveries/s with one worker process; from an event's
commit to its arrival p99 < 1 s when nothing is retrying.

Real processes, as in production: crypto, auth (its workspace directory answers audit), audit
and webhooks (one process: its API, its outbox forwarder, the intake and the
delivery worker, default settings but the allowlist ["127.0.0.0/8"] so it may deliver to the
receiver over plain http), each with its own Postgres database. The receiver is an aiohttp
server in this process on 127.0.0.1, answering 200 at once; it verifies nothing (the tests do).
WORKSPACES workspaces each have one endpoint subscribed to session.login_succeeded and
webhook.updated.

Measured:
- worker throughput (TRIALS times, the median reported): DELIVERIES deliveries inserted
  straight into the webhooks queue in one transaction, time from their commit to the last
  arrival (the worker alone: claim, open the URL and secrets through crypto, sign, POST,
  settle);
- pipeline throughput: EVENTS events ingested into audit (as service:auth, batches of 500),
  time from the first Ingest to the last arrival (audit's stream, the intake's fan-out, the
  worker);
- commit-to-arrival: LATENCY_EVENTS endpoint updates made one by one through the webhooks API
  (each commits a webhook.updated event in the service's own outbox), paced, with nothing
  retrying, timed from the API's answer to the receiver: the outbox forwarder (woken by the
  commit; it also polls every PALISADE_WEBHOOKS_AUDIT_POLL_SECONDS, 1 s by default), audit's
  Ingest and stream, the intake, the worker.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import insert

from bench.common import fresh_postgres_database, print_table, running_service
from bench.cpu_budget import _postgres_cpu_seconds
from bench.http_bench import cpu_seconds
from bench.p7_audit_ingest import _workspaces
from palisade.common.caller import AssertionSigner
from palisade.common.clock import SystemClock
from palisade.common.db import create_engine
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade_api.audit.v1 import audit_pb2, audit_pb2_grpc
from palisade_api.webhooks.v1 import webhooks_pb2, webhooks_pb2_grpc

WORKSPACES = 16
DELIVERIES = 6000
TRIALS = 3  # of the worker's throughput; the median is reported
EVENTS = 6000
LATENCY_EVENTS = 200
LATENCY_GAP_SECONDS = 0.05
TARGET_RATE = 500
TARGET_P99 = 1.0
EVENT_TYPE = "session.login_succeeded"
LATENCY_TYPE = "webhook.updated"  # emitted by webhooks itself, into its own outbox
CREATE = "/palisade.webhooks.v1.WebhooksService/CreateWebhook"
UPDATE = "/palisade.webhooks.v1.WebhooksService/UpdateWebhook"
INGEST = "/palisade.audit.v1.AuditService/Ingest"


class Receiver:
    """Records the arrival time of each event id (data.id of the body)."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.port = 0
        self.ports: list[int] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        event_id = request.headers.get("webhook-id", "")
        self.arrivals.setdefault(event_id, now)
        self.count += 1
        for waiter in [w for w in self._waiters if self.count >= w[0]]:
            self._waiters.remove(waiter)
            if not waiter[1].done():
                waiter[1].set_result(None)
        del body
        return web.Response(status=200)

    async def until(self, count: int, within: float = 300.0) -> None:
        if self.count >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((count, future))
        await asyncio.wait_for(future, timeout=within)

    async def until_ids(self, ids: set[str], within: float) -> None:
        """Until every one of ids has arrived, or `within` seconds (then some are missing)."""
        deadline = time.time() + within
        while time.time() < deadline and not ids <= self.arrivals.keys():
            try:
                await self.until(self.count + 1, within=max(0.01, deadline - time.time()))
            except TimeoutError:
                return

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        self.port = int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        # One listening port per endpoint, as distinct receivers would be: a connection per
        # attempt to ONE address:port leaves tens of thousands of TIME_WAIT sockets on that
        # one 4-tuple space within a minute, and finding a free source port then costs the
        # kernel more per connect than the delivery itself.
        for _ in range(WORKSPACES - 1):
            extra = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
            await extra.start()
            self.ports.append(int(extra._server.sockets[0].getsockname()[1]))  # type: ignore[union-attr]
        self.ports.insert(0, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _signer(data_dir: Path, issuer: str) -> AssertionSigner:
    keys = KeySource.from_master(read_document(data_dir / "keys" / "edges.json"), issuer)
    return AssertionSigner(keys=keys, clock=SystemClock(), ttl_seconds=60)


async def _endpoints(
    webhooks_port: int, data_dir: Path, workspaces: list[tuple[str, str]], ports: list[int]
) -> list[str]:
    signer = _signer(data_dir, "gateway")
    created = []
    async with insecure_channel(f"127.0.0.1:{webhooks_port}") as channel:
        stub = webhooks_pb2_grpc.WebhooksServiceStub(channel)
        for (workspace, user), port in zip(workspaces, ports, strict=True):
            url = f"http://127.0.0.1:{port}/hook"
            token = signer.sign(
                audience="webhooks",
                method=CREATE,
                principal=f"user:{user}",
                request_id=uuid.uuid4().hex,
                workspace_id=workspace,
                session_id="ses_bench",
                role="owner",
                authenticated_at=int(time.time()),
            )
            answer = await stub.CreateWebhook(
                webhooks_pb2.CreateWebhookRequest(url=url, event_types=[EVENT_TYPE, LATENCY_TYPE]),
                metadata=(("x-palisade-caller", token),),
            )
            created.append(answer.webhook.id)
    return created


def _body(event_id: str) -> str:
    return json.dumps(
        {
            "type": EVENT_TYPE,
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {"id": event_id, "type": EVENT_TYPE},
        },
        separators=(",", ":"),
    )


async def _worker_rate(
    receiver: Receiver, webhooks_db: str, endpoints: list[str], workspaces: list[Any]
) -> float:
    from palisade.webhooks.tables import deliveries

    engine = create_engine(webhooks_db)
    now = datetime.now(UTC)
    rows = []
    for i in range(DELIVERIES):
        event_id = uuid.uuid4().hex
        rows.append(
            {
                "id": f"dlv_{uuid.uuid4().hex}",
                "endpoint_id": endpoints[i % len(endpoints)],
                "workspace_id": workspaces[i % len(endpoints)][0],
                "event_id": event_id,
                "event_type": EVENT_TYPE,
                "payload": _body(event_id),
                "state": "pending",
                "attempts": 0,
                "schedule_base": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
    start_count = receiver.count
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(deliveries), rows)
            # Fresh statistics, as autovacuum would have them in a steady state: the claim's
            # plan must not be made for the empty table of the first trial.
            await conn.exec_driver_sql("ANALYZE deliveries")
        committed = time.time()
        await receiver.until(start_count + DELIVERIES)
    finally:
        await engine.dispose()
    last = max(receiver.arrivals[r["event_id"]] for r in rows)
    return DELIVERIES / (last - committed)


async def _pipeline_rate(
    receiver: Receiver, audit_port: int, data_dir: Path, workspaces: list[Any]
) -> float:
    identity = ServiceIdentity(name="auth", signer=_signer(data_dir, "auth"))
    moment = Timestamp()
    moment.FromDatetime(datetime.now(UTC))
    batches = []
    for b in range(EVENTS // 500):
        events = [
            audit_pb2.IngestEvent(
                event_id=uuid.uuid4().hex,
                type=EVENT_TYPE,
                occurred_at=moment,
                workspace_id=workspaces[(b * 500 + i) % len(workspaces)][0],
                actor=f"user:{workspaces[(b * 500 + i) % len(workspaces)][1]}",
                outcome="success",
            )
            for i in range(500)
        ]
        batches.append(audit_pb2.IngestRequest(events=events))
    start_count = receiver.count
    async with insecure_channel(f"127.0.0.1:{audit_port}") as channel:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        started = time.time()
        for batch in batches:
            await stub.Ingest(batch, metadata=identity.metadata("audit", INGEST), timeout=60)
        await receiver.until(start_count + len(batches) * 500)
    ids = [e.event_id for b in batches for e in b.events]
    return len(ids) / (max(receiver.arrivals[i] for i in ids) - started)


async def _latencies(
    receiver: Receiver,
    webhooks_port: int,
    data_dir: Path,
    workspaces: list[Any],
    endpoints: list[str],
) -> list[float]:
    """Endpoint updates made one by one through the webhooks API, as the gateway makes them:
    each commits its webhook.updated event in the webhooks service's own outbox, and that
    commit wakes the service's forwarder (palisade.common.outbox.OUTBOX_WAKE_FLAG). Each is
    timed from the API's answer (after its commit) to the event's arrival at the receiver:
    forwarder, audit's Ingest and stream, the intake, the worker."""
    signer = _signer(data_dir, "gateway")
    latencies: list[float] = []
    async with insecure_channel(f"127.0.0.1:{webhooks_port}") as channel:
        stub = webhooks_pb2_grpc.WebhooksServiceStub(channel)
        for n in range(LATENCY_EVENTS):
            (workspace, user), endpoint = (
                workspaces[n % len(workspaces)],
                endpoints[n % len(endpoints)],
            )
            token = signer.sign(
                audience="webhooks",
                method=UPDATE,
                principal=f"user:{user}",
                request_id=uuid.uuid4().hex,
                workspace_id=workspace,
                session_id="ses_bench",
                role="owner",
                authenticated_at=int(time.time()),
            )
            seen, count = set(receiver.arrivals), receiver.count
            await stub.UpdateWebhook(
                webhooks_pb2.UpdateWebhookRequest(id=endpoint, description=f"bench {n}"),
                metadata=(("x-palisade-caller", token),),
            )
            committed = time.time()
            try:
                await receiver.until(count + 1, within=30)
            except TimeoutError:
                continue  # counted as not arrived
            [new] = set(receiver.arrivals) - seen or [""]
            if new:
                latencies.append(receiver.arrivals[new] - committed)
            await asyncio.sleep(LATENCY_GAP_SECONDS)
    return latencies


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        data_dir = Path(tmp)
        dbs = {
            name: stack.enter_context(fresh_postgres_database())
            for name in ("crypto", "auth", "audit", "webhooks")
        }
        crypto = stack.enter_context(
            running_service(
                "palisade.crypto",
                "PALISADE_CRYPTO_",
                data_dir,
                {"PALISADE_CRYPTO_DATABASE_URL": dbs["crypto"]},
            )
        )
        auth = stack.enter_context(
            running_service(
                "palisade.auth",
                "PALISADE_AUTH_",
                data_dir,
                {
                    "PALISADE_AUTH_DATABASE_URL": dbs["auth"],
                    "PALISADE_AUTH_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
                    # Auth only answers audit's workspace questions here.
                    "PALISADE_AUTH_AUDIT_TARGET": "127.0.0.1:9",
                    "PALISADE_AUTH_LOG_LEVEL": "ERROR",
                },
            )
        )
        audit = stack.enter_context(
            running_service(
                "palisade.audit",
                "PALISADE_AUDIT_",
                data_dir,
                {
                    "PALISADE_AUDIT_DATABASE_URL": dbs["audit"],
                    "PALISADE_AUDIT_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
                    "PALISADE_AUDIT_AUTH_TARGET": f"127.0.0.1:{auth.port}",
                },
            )
        )

        def webhooks_service(poll: str) -> Any:
            return running_service(
                "palisade.webhooks",
                "PALISADE_WEBHOOKS_",
                data_dir,
                {
                    "PALISADE_WEBHOOKS_DATABASE_URL": dbs["webhooks"],
                    "PALISADE_WEBHOOKS_CRYPTO_TARGET": f"127.0.0.1:{crypto.port}",
                    "PALISADE_WEBHOOKS_AUDIT_TARGET": f"127.0.0.1:{audit.port}",
                    "PALISADE_WEBHOOKS_AUTH_TARGET": f"127.0.0.1:{auth.port}",
                    "PALISADE_WEBHOOKS_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
                    "PALISADE_WEBHOOKS_AUDIT_POLL_SECONDS": poll,
                    "PALISADE_WEBHOOKS_LOG_LEVEL": "ERROR",
                },
            )

        workspaces = _workspaces(auth.port, data_dir)[:WORKSPACES]
        cpu: list[float] = []

        trial_rates: list[float] = []
        extra: list[int] = []

        async def run() -> tuple[float, float, dict[str, list[float]]]:
            receiver = Receiver()
            await receiver.start()
            latencies: dict[str, list[float]] = {}
            try:
                with webhooks_service("1.0") as webhooks:
                    endpoints = await _endpoints(
                        webhooks.port,
                        data_dir,
                        workspaces,
                        receiver.ports,
                    )
                    pids = (webhooks.pid, crypto.pid)
                    before = [cpu_seconds(p) or 0.0 for p in pids] + [_postgres_cpu_seconds()]
                    before.append(time.process_time())
                    rates = [
                        await _worker_rate(receiver, dbs["webhooks"], endpoints, workspaces)
                        for _ in range(TRIALS)
                    ]
                    worker = statistics.median(rates)
                    trial_rates[:] = rates
                    after = [cpu_seconds(p) or 0.0 for p in pids] + [_postgres_cpu_seconds()]
                    after.append(time.process_time())
                    cpu[:] = [
                        (a - b) / DELIVERIES * 1000 for a, b in zip(after, before, strict=True)
                    ]
                    pipeline = await _pipeline_rate(receiver, audit.port, data_dir, workspaces)
                    latencies["1.0"] = await _latencies(
                        receiver, webhooks.port, data_dir, workspaces, endpoints
                    )
                extra[:] = [receiver.count - len(receiver.arrivals)]
                return worker, pipeline, latencies
            finally:
                await receiver.stop()

        worker_rate, pipeline_rate, latencies = asyncio.run(run())
    rows = [
        (
            f"deliveries/s, worker alone (queue -> receiver), median of {TRIALS}",
            f"{worker_rate:,.0f}   target >= {TARGET_RATE}",
        ),
        ("deliveries/s, worker alone, each trial", "  ".join(f"{r:,.0f}" for r in trial_rates)),
        (
            "deliveries/s, audit Ingest -> stream -> intake -> worker -> receiver",
            f"{pipeline_rate:,.0f}",
        ),
    ]
    rows.append(("requests beyond one per event (retries, duplicates)", f"{extra[0]}"))
    for label, value in zip(
        ("webhooks", "crypto", "postgres", "this process (receiver, load)"), cpu, strict=True
    ):
        rows.append((f"CPU s per 1,000 deliveries (worker alone): {label}", f"{value:.3f}"))
    figures = {"p12_deliveries_per_s": worker_rate, "p12_pipeline_per_s": pipeline_rate}
    for poll, values in latencies.items():
        lost = LATENCY_EVENTS - len(values)
        p50, p99 = statistics.median(values), _quantile(values, 0.99)
        rows.append(
            (
                f"API commit -> arrival (forwarder woken, poll {poll} s): p50 / p99",
                f"{p50 * 1000:,.0f} ms / {p99 * 1000:,.0f} ms   target p99 < "
                f"{TARGET_P99 * 1000:.0f} ms" + (f"   ({lost} not arrived)" if lost else ""),
            )
        )
        figures[f"p12_latency_p99_ms_poll_{poll}"] = p99 * 1000
    print_table(
        f"P12  webhook delivery to a local receiver ({WORKSPACES} endpoints, one webhooks "
        "process, Postgres)",
        rows,
    )
    return figures


if __name__ == "__main__":
    main()
