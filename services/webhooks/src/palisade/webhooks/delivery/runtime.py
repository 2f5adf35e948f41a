"""The delivery side of the service, built from its settings and run for the server's lifetime:
the worker, the stream intake and the owners' notice sweep, each a task that always stops
(palisade.common.tasks), plus the periodic refresh of the queue gauges.

server.background_tasks() runs `running_delivery(...)`; tests build a DeliveryRuntime
themselves to drive the worker directly (worker.drain()) with a ManualClock.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.clock import Clock
from palisade.common.grpc_client import ServiceIdentity, relay_channel
from palisade.common.relay_loop import Wakeup
from palisade.common.tasks import running_in_background
from palisade.webhooks.config import WebhooksSettings
from palisade.webhooks.delivery.metrics import DeliveryMetrics
from palisade.webhooks.delivery.notices import DisabledNotices
from palisade.webhooks.delivery.schedule import RetrySchedule
from palisade.webhooks.delivery.store import DeliveryStore
from palisade.webhooks.delivery.worker import DeliveryWorker, EndpointTargets, default_worker_id
from palisade.webhooks.egress.addresses import AddressPolicy
from palisade.webhooks.egress.client import Connector, DeliveryClient
from palisade.webhooks.egress.resolver import Resolver
from palisade.webhooks.intake.consumer import StreamIntake

log = logging.getLogger("palisade.webhooks.delivery")

GAUGE_REFRESH_SECONDS = 15.0


@dataclass
class DeliveryRuntime:
    worker: DeliveryWorker
    intake: StreamIntake
    notices: DisabledNotices
    store: DeliveryStore
    metrics: DeliveryMetrics
    clock: Clock
    registry: CollectorRegistry

    async def refresh_gauges(self) -> None:
        stats = await self.store.stats()
        self.metrics.queue_depth.set(stats.depth)
        self.metrics.disabled_endpoints.set(stats.disabled_endpoints)
        oldest = stats.oldest_created_at
        age = (self.clock.now() - oldest).total_seconds() if oldest is not None else 0.0
        self.metrics.oldest_pending_seconds.set(max(0.0, age))

    async def refresh_gauges_forever(self, seconds: float = GAUGE_REFRESH_SECONDS) -> None:
        wakeup = Wakeup()  # never rung: a plain interval that cancellation always ends
        while True:
            try:
                await self.refresh_gauges()
            except Exception:
                log.exception("refreshing the delivery queue gauges failed")
            await wakeup.wait(seconds)


def build_runtime(
    *,
    settings: WebhooksSettings,
    engine: AsyncEngine,
    targets: EndpointTargets,
    identity: ServiceIdentity,
    clock: Clock,
    registry: CollectorRegistry,
    policy: AddressPolicy,
    resolver: Resolver,
    connector: Connector | None,
    audit_channel: grpc.aio.Channel,
    auth_channel: grpc.aio.Channel,
    worker_id: str | None = None,
) -> DeliveryRuntime:
    metrics = DeliveryMetrics(registry)
    store = DeliveryStore(engine=engine, worker_id=worker_id or default_worker_id())
    client = DeliveryClient(
        policy=policy,
        resolver=resolver,
        connector=connector,
        timeout_seconds=settings.delivery_timeout_seconds,
        max_body_bytes=settings.max_response_bytes,
        max_retry_after_seconds=settings.max_retry_after_seconds,
        clock=clock,
    )
    notices = DisabledNotices(engine=engine, channel=auth_channel, identity=identity, clock=clock)
    worker = DeliveryWorker(
        store=store,
        targets=targets,
        client=client,
        clock=clock,
        schedule=RetrySchedule(waits=settings.retry_schedule, jitter=settings.retry_jitter),
        metrics=metrics,
        concurrency=settings.worker_concurrency,
        per_endpoint=settings.per_endpoint_concurrency,
        per_workspace=settings.per_workspace_concurrency,
        batch_size=settings.claim_batch_size,
        lease_seconds=settings.claim_lease_seconds,
        poll_seconds=settings.worker_poll_seconds,
        disable_after_seconds=settings.disable_after_failing_seconds,
        notifier=notices,
    )
    intake = StreamIntake(
        engine=engine,
        channel=audit_channel,
        identity=identity,
        clock=clock,
        metrics=metrics,
        start=settings.stream_start,
        retry_seconds=settings.stream_retry_seconds,
        on_queued=worker.notify,
    )
    return DeliveryRuntime(
        worker=worker,
        intake=intake,
        notices=notices,
        store=store,
        metrics=metrics,
        clock=clock,
        registry=registry,
    )


@asynccontextmanager
async def running_delivery(
    *,
    settings: WebhooksSettings,
    engine: AsyncEngine,
    targets: EndpointTargets,
    identity: ServiceIdentity,
    clock: Clock,
    registry: CollectorRegistry,
    policy: AddressPolicy,
    resolver: Resolver,
    connector: Connector | None,
) -> AsyncIterator[DeliveryRuntime]:
    """The worker, the intake, the notice sweep and the gauges, for the block's duration. The
    channels to audit and auth connect lazily and reconnect quickly (relay_channel): the
    service starts before its peers are up and waits out their outages."""
    async with AsyncExitStack() as stack:
        audit_channel = relay_channel(settings.audit_target)
        stack.push_async_callback(audit_channel.close, None)
        auth_channel = relay_channel(settings.auth_target)
        stack.push_async_callback(auth_channel.close, None)
        runtime = build_runtime(
            settings=settings,
            engine=engine,
            targets=targets,
            identity=identity,
            clock=clock,
            registry=registry,
            policy=policy,
            resolver=resolver,
            connector=connector,
            audit_channel=audit_channel,
            auth_channel=auth_channel,
        )
        for coro, name in (
            (runtime.worker.run(), "palisade-webhooks-worker"),
            (runtime.intake.run(), "palisade-webhooks-intake"),
            (runtime.notices.run(), "palisade-webhooks-notices"),
            (runtime.refresh_gauges_forever(), "palisade-webhooks-gauges"),
        ):
            await stack.enter_async_context(running_in_background(coro, name=name))
        yield runtime
