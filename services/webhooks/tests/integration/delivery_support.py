"""Helpers of the delivery and intake tests: a scripted local receiver, events as audit's
stream hands them out, and the delivery runtime built over a running webhooks harness.

Receivers listen on 127.0.0.1 only; the delivery client gets the egress tests' FakeResolver
and LoopbackOnlyConnector (tests/conftest.py), so no name is resolved and no socket can reach
beyond loopback, whatever the code under test does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from palisade.common.caller import AssertionSigner
from palisade.common.edge_keys import KeySource, read_document
from palisade.common.grpc_client import ServiceIdentity
from palisade.crypto.config import CryptoSettings
from palisade.webhooks.delivery.runtime import DeliveryRuntime, build_runtime
from palisade.webhooks.egress.addresses import AddressPolicy
from palisade.webhooks.intake.fanout import fan_out
from palisade.webhooks.tables import deliveries, delivery_attempts, endpoints
from palisade_api.audit.v1 import audit_pb2

HANG = "hang"
LOCAL_NETWORKS = ["127.0.0.0/8"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.perf_counter() on arrival


@dataclass
class Receiver:
    """An aiohttp receiver on 127.0.0.1: per path, a script of answers (a status, a (status,
    headers) pair, or HANG), then 200s. Records every request and the most attempts it saw at
    once per path."""

    requests: list[Received] = field(default_factory=list)
    script: dict[str, deque[Any]] = field(default_factory=lambda: defaultdict(deque))
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    delay_seconds: float = 0.0  # every answer waits this long (a slowish receiver)
    port: int = 0
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _arrival: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, path: str, *answers: Any) -> None:
        self.script[path].extend(answers)

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def until(self, count: int, *, within: float = 10.0) -> list[Received]:
        """Waits (woken by each arrival, never polling) until count requests have come."""
        async with asyncio.timeout(within):
            while len(self.requests) < count:
                self._arrival.clear()
                await self._arrival.wait()
        return self.requests

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(Received(path, headers, body, time.perf_counter()))
        self._arrival.set()
        self.in_flight[path] += 1
        self.max_in_flight[path] = max(self.max_in_flight[path], self.in_flight[path])
        try:
            answer = self.script[path].popleft() if self.script[path] else 200
            if answer == HANG:
                await self._release.wait()
                answer = 200
            if self.delay_seconds:
                await asyncio.sleep(self.delay_seconds)
            status, headers = answer if isinstance(answer, tuple) else (answer, {})
            return web.Response(status=status, text="ok", headers=headers)
        finally:
            self.in_flight[path] -= 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    running = Receiver()
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def streamed(
    *,
    workspace: str,
    type: str = "session.login_succeeded",
    event_id: str | None = None,
    cursor: str | None = None,
    occurred_at: datetime | None = None,
) -> audit_pb2.StreamedEvent:
    """One event as audit's StreamEvents sends it (include_pii off: no ip, no user agent)."""
    moment = Timestamp()
    moment.FromDatetime(occurred_at or datetime.now(UTC))
    event = audit_pb2.Event(
        id=event_id or uuid.uuid4().hex,
        type=type,
        occurred_at=moment,
        actor=audit_pb2.Actor(type="user", id="usr_alice"),
        subject="user:usr_alice",
        outcome="success",
        details={"method": "password"},
        workspace_id=workspace,
        source="auth",
    )
    return audit_pb2.StreamedEvent(cursor=cursor or f"{uuid.uuid4().int % 10**9}.0", event=event)


def webhooks_identity(harness: Any) -> ServiceIdentity:
    master = read_document(
        CryptoSettings(data_dir=harness.settings.data_dir).resolved_edge_keys_master_file()
    )
    signer = AssertionSigner(
        keys=KeySource.from_master(master, "webhooks"), clock=harness.clock, ttl_seconds=60
    )
    return ServiceIdentity(name="webhooks", signer=signer)


def runtime_of(
    harness: Any,
    connector: Any,
    *,
    engine: Any = None,
    auth_channel: grpc.aio.Channel | None = None,
    audit_channel: grpc.aio.Channel | None = None,
    worker_id: str = "test-worker",
) -> DeliveryRuntime:
    """The worker, intake and notices over the harness's database and endpoint service."""
    nowhere = grpc.aio.insecure_channel("127.0.0.1:9")
    return build_runtime(
        settings=harness.settings,
        engine=engine or harness.server.engine,
        targets=harness.server.service,
        identity=webhooks_identity(harness),
        clock=harness.clock,
        registry=CollectorRegistry(),
        policy=AddressPolicy(allowed_networks=harness.settings.allowed_networks),
        resolver=harness.resolver,
        connector=connector,
        audit_channel=audit_channel or nowhere,
        auth_channel=auth_channel or nowhere,
        worker_id=worker_id,
    )


async def queue_events(harness: Any, *events: audit_pb2.StreamedEvent) -> int:
    return await fan_out(harness.server.engine, list(events), now=harness.clock.now())


async def delivery_of(harness: Any, endpoint_id: str, event_id: str) -> Any:
    async with harness.server.engine.connect() as conn:
        return (
            await conn.execute(
                select(deliveries).where(
                    deliveries.c.endpoint_id == endpoint_id, deliveries.c.event_id == event_id
                )
            )
        ).one()


async def attempts_of(harness: Any, delivery_id: str) -> list[Any]:
    async with harness.server.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    select(delivery_attempts)
                    .where(delivery_attempts.c.delivery_id == delivery_id)
                    .order_by(delivery_attempts.c.number)
                )
            ).all()
        )


async def endpoint_row(harness: Any, endpoint_id: str) -> Any:
    async with harness.server.engine.connect() as conn:
        return (await conn.execute(select(endpoints).where(endpoints.c.id == endpoint_id))).one()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return float(value or 0.0)
