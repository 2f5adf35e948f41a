"""Composition root: builds the visitors service (VisitorsService and ChatsService) and runs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass

import grpc
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from palisade.common.audit_forwarder import forwarding_to_audit
from palisade.common.caller import AssertionSigner, AssertionVerifier
from palisade.common.clock import Clock, SystemClock
from palisade.common.crypto_client import CryptoClient
from palisade.common.db import create_engine, resolve_database_url
from palisade.common.edge_keys import KeySource, open_service_keys
from palisade.common.edges import EDGES, Edge
from palisade.common.grpc_client import ServiceIdentity, insecure_channel
from palisade.common.grpc_server import RunningServer, run_server
from palisade.common.migrations import upgrade
from palisade.common.page_tokens import PageTokens, load_page_token_key
from palisade.visitors.chats.errors import InvalidPageToken
from palisade.visitors.chats.servicer import ChatsServicer
from palisade.visitors.config import SERVICE_NAME, VisitorsSettings
from palisade.visitors.maintenance import KeyMaintenance
from palisade.visitors.metrics import VisitorsMetrics
from palisade.visitors.service import VisitorsService
from palisade.visitors.servicer import VisitorsServicer
from palisade.visitors.store import VisitorStore
from palisade.visitors.tables import MIGRATIONS_PACKAGE, outbox_events
from palisade_api.visitors.v1 import visitors_pb2, visitors_pb2_grpc

log = logging.getLogger("palisade.visitors.server")


@dataclass
class VisitorsServer:
    running: RunningServer
    service: VisitorsService
    maintenance: KeyMaintenance
    registry: CollectorRegistry
    engine: AsyncEngine  # for tests that look at the tables
    crypto: CryptoClient  # signing as visitors, for tests that open envelopes themselves


@asynccontextmanager
async def crypto_client(
    settings: VisitorsSettings, clock: Clock, keys: KeySource, *, needs_audit: bool = False
) -> AsyncIterator[tuple[CryptoClient, ServiceIdentity]]:
    """A client of crypto signing as visitors (the server and the operator commands)."""
    signer = AssertionSigner(keys=keys, clock=clock, ttl_seconds=settings.assertion_ttl_seconds)
    signer.require_edge("crypto")  # fail at start, not on the first request
    if needs_audit:
        signer.require_edge("audit")
    identity = ServiceIdentity(name=SERVICE_NAME, signer=signer)
    channel = insecure_channel(settings.crypto_target)
    try:
        yield CryptoClient(channel=channel, identity=identity), identity
    finally:
        await channel.close(None)


def maintenance_of(
    settings: VisitorsSettings,
    *,
    store: VisitorStore,
    crypto: CryptoClient,
    clock: Clock,
    metrics: VisitorsMetrics,
) -> KeyMaintenance:
    return KeyMaintenance(
        store=store,
        crypto=crypto,
        clock=clock,
        metrics=metrics,
        batch_rows=settings.rewrap_batch_rows,
        rows_per_second=settings.rewrap_rows_per_second,
        poll_seconds=settings.rewrap_poll_seconds,
    )


@asynccontextmanager
async def serve_visitors(
    settings: VisitorsSettings,
    *,
    clock: Clock | None = None,
    edges: Sequence[Edge] = EDGES,
    run_rewrap: bool | None = None,
) -> AsyncIterator[VisitorsServer]:
    """Starts the visitors service; stops it gracefully on exit (edges: tests may add some;
    run_rewrap: default settings.rewrap_enabled, False for tests that drive the job)."""
    clock = clock or SystemClock()
    keys = open_service_keys(settings, SERVICE_NAME, now=clock.timestamp(), edges=edges)
    page_tokens = PageTokens(
        load_page_token_key(
            settings.resolved_page_token_key_file(), create=settings.create_missing_keys
        ),
        invalid=InvalidPageToken,
    )
    async with AsyncExitStack() as stack:
        database_url = resolve_database_url(
            settings.database_url, data_dir=settings.data_dir, service=SERVICE_NAME
        )
        engine = create_engine(
            database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        stack.push_async_callback(engine.dispose)
        if settings.migrate_on_start:
            await upgrade(engine, MIGRATIONS_PACKAGE)

        crypto, identity = await stack.enter_async_context(
            crypto_client(settings, clock, keys, needs_audit=True)
        )
        registry = CollectorRegistry()
        metrics = VisitorsMetrics(registry)
        store = VisitorStore(engine=engine)
        service = VisitorsService(store=store, crypto=crypto, clock=clock, page_tokens=page_tokens)
        maintenance = maintenance_of(
            settings, store=store, crypto=crypto, clock=clock, metrics=metrics
        )
        chats = ChatsServicer(
            engine=engine, clock=clock, outbox_table=outbox_events, page_tokens=page_tokens
        )

        def add_servicers(server: grpc.aio.Server) -> list[str]:
            visitors_pb2_grpc.add_VisitorsServiceServicer_to_server(
                VisitorsServicer(service=service), server
            )
            visitors_pb2_grpc.add_ChatsServiceServicer_to_server(chats, server)
            names = visitors_pb2.DESCRIPTOR.services_by_name
            return [names["VisitorsService"].full_name, names["ChatsService"].full_name]

        verifier = AssertionVerifier(
            keys=keys, clock=clock, replay_cache_entries=settings.replay_cache_entries
        )
        rewrap = settings.rewrap_enabled if run_rewrap is None else run_rewrap
        async with (
            run_server(
                name=SERVICE_NAME,
                settings=settings,
                verifier=verifier,
                registry=registry,
                add_servicers=add_servicers,
            ) as running,
            maintenance.running() if rewrap else nullcontext(),
            forwarding_to_audit(
                target=settings.audit_target,
                identity=identity,
                engine=engine,
                table=outbox_events,
                clock=clock,
                registry=registry,
                batch_size=settings.audit_batch_size,
                poll_seconds=settings.audit_poll_seconds,
            ),
        ):
            await maintenance.refresh_metrics()
            yield VisitorsServer(running, service, maintenance, registry, engine, crypto)
