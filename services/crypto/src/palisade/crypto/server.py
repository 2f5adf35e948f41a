"""Composition root: builds the crypto service from settings and runs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.caller import AssertionVerifier
from palisade.common.clock import Clock, SystemClock
from palisade.common.db import create_engine, resolve_database_url
from palisade.common.direct_reads import DirectReads
from palisade.common.edge_keys import open_service_keys
from palisade.common.edges import EDGES, Edge
from palisade.common.grpc_server import RunningServer, run_server
from palisade.common.migrations import upgrade
from palisade.common.tasks import cancel_and_wait
from palisade.crypto.config import SERVICE_NAME, CryptoSettings
from palisade.crypto.data_consumers import DataConsumers
from palisade.crypto.index_consumers import IndexConsumers
from palisade.crypto.keyring import Keyring
from palisade.crypto.keyring_file import KeyringHolder, create_keyring
from palisade.crypto.metrics import CryptoMetrics
from palisade.crypto.service import CryptoService, Limits
from palisade.crypto.servicer import CryptoServicer
from palisade.crypto.store import MIGRATIONS_PACKAGE, DatabaseUsageStore
from palisade.crypto.subject_store import DatabaseSubjectStore
from palisade.crypto.usage import UsageTracker
from palisade_api.crypto.v1 import crypto_pb2, crypto_pb2_grpc

log = logging.getLogger("palisade.crypto.server")


@dataclass
class CryptoServer:
    """A running crypto service: its server handle and its domain object (for tests)."""

    running: RunningServer
    service: CryptoService
    keyring: KeyringHolder
    registry: CollectorRegistry
    engine: AsyncEngine
    reads: DirectReads


async def _periodically(interval: float, action: str, step: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await step()
        except Exception:
            # e.g. the database is briefly down: counts stay pending and are retried.
            log.exception("periodic task failed", extra={"task": action})


@asynccontextmanager
async def serve_crypto(
    settings: CryptoSettings, *, clock: Clock | None = None, edges: Sequence[Edge] = EDGES
) -> AsyncIterator[CryptoServer]:
    """Starts the crypto service; stops it gracefully on exit (edges: tests may add some)."""
    clock = clock or SystemClock()
    keyring_path = settings.resolved_keyring_file()
    if settings.create_missing_keys and create_keyring(keyring_path, clock):
        log.info("created a new keyring", extra={"path": str(keyring_path)})
    registry = CollectorRegistry()
    metrics = CryptoMetrics(registry)

    def on_reload(keyring: Keyring, ok: bool) -> None:
        metrics.keyring_reloads.labels("ok" if ok else "invalid").inc()
        metrics.primary_version.set(keyring.data.primary)

    holder = KeyringHolder(keyring_path, on_reload=on_reload)
    metrics.primary_version.set(holder.current.data.primary)
    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp(), edges=edges)
    engine = create_engine(
        resolve_database_url(
            settings.database_url, data_dir=settings.data_dir, service=SERVICE_NAME
        ),
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    # Subject-key reads (every Decrypt and Encrypt naming a subject) skip the engine on
    # Postgres; as many connections as the engine may hold.
    reads = DirectReads.open(
        engine, pool_size=settings.database_pool_size + settings.database_max_overflow
    )
    try:
        if settings.migrate_on_start:
            await upgrade(engine, MIGRATIONS_PACKAGE)
        usage = UsageTracker(
            store=DatabaseUsageStore(engine=engine),
            warn_threshold=settings.usage_warn_threshold,
            rotate_threshold=settings.usage_rotate_threshold,
            hard_limit=settings.usage_hard_limit,
            lease_size=settings.usage_lease_size,
        )
        service = CryptoService(
            keyring=holder,
            usage=usage,
            limits=Limits(settings.max_batch_items, settings.max_item_bytes),
            metrics=metrics,
            clock=clock,
            auto_rotate=settings.auto_rotate,
            subjects=DatabaseSubjectStore(engine=engine, reads=reads),
        )
        await service.sync_usage()  # know every replica's totals before the first encryption

        def add_servicers(server: grpc.aio.Server) -> list[str]:
            servicer = CryptoServicer(
                service,
                IndexConsumers(engine=engine, clock=clock),
                DataConsumers(engine=engine, clock=clock),
            )
            crypto_pb2_grpc.add_CryptoServiceServicer_to_server(servicer, server)
            return [crypto_pb2.DESCRIPTOR.services_by_name["CryptoService"].full_name]

        verifier = AssertionVerifier(
            keys=keys, clock=clock, replay_cache_entries=settings.replay_cache_entries
        )
        async with run_server(
            name=SERVICE_NAME,
            settings=settings,
            verifier=verifier,
            registry=registry,
            add_servicers=add_servicers,
        ) as running:
            tasks = [
                asyncio.create_task(holder.watch(settings.keyring_reload_seconds)),
                asyncio.create_task(
                    _periodically(settings.usage_sync_seconds, "usage_sync", service.sync_usage)
                ),
            ]
            try:
                yield CryptoServer(running, service, holder, registry, engine, reads)
            finally:
                for task in tasks:
                    await cancel_and_wait(task)
    finally:
        await reads.close()
        await engine.dispose()
